"""Budget strings: every accepted form and clear errors for the rest."""

from __future__ import annotations

import pytest

from bitswitch.search.budget import Budget, parse_budget


@pytest.mark.parametrize(
    "text, expected",
    [
        ("avg-bits=3", Budget("avg-bits", 3.0)),
        ("avg_bits=3.5", Budget("avg-bits", 3.5)),
        ("wavg-bits=4", Budget("wavg-bits", 4.0)),
        ("bytes=1.2e5", Budget("bytes", 1.2e5)),
        ("bytes=0.5", Budget("bytes", 0.5, relative=True)),
        ("bops=0.5", Budget("bops", 0.5, relative=True)),
        ("bops=50%", Budget("bops", 0.5, relative=True)),
        ("bops=2x", Budget("bops", 2.0, relative=True)),
        ("bops=0.5@w8a16", Budget("bops", 0.5, relative=True, reference="w8a16")),
        ("bops=3e9", Budget("bops", 3e9)),
        (" BOPS = 0.25 ", Budget("bops", 0.25, relative=True)),
    ],
)
def test_parse_forms(text: str, expected: Budget) -> None:
    assert parse_budget(text) == expected


@pytest.mark.parametrize("b", ["avg-bits=3", "bytes=120000", "bops=0.5x", "bops=0.25x@w8a16"])
def test_describe_round_trips(b: str) -> None:
    parsed = parse_budget(b)
    assert parse_budget(parsed.describe()) == parsed


@pytest.mark.parametrize(
    "text, match",
    [
        ("avg-bits", "malformed budget"),
        ("bops=abc", "malformed budget"),
        ("speed=3", "unknown budget kind"),
        ("avg-bits=-1", "positive"),
        ("avg-bits=0", "positive"),
        ("avg-bits=50%", "absolute"),
        ("bytes=0.5@w8a16", "only applies to bops"),
        ("bops=3e9@w8a16", "relative"),
        ("bops=0.5@w4a4", "unknown budget reference"),
    ],
)
def test_malformed(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_budget(text)
