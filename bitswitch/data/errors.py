"""Errors raised by :mod:`bitswitch.data`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["DataError", "layout_error"]


class DataError(ValueError):
    """A data path is missing or its contents are not in an accepted layout.

    Messages always name the path that was looked at and describe what was expected.
    """


def layout_error(what: str, path: str | Path, layouts: Iterable[str], detail: str = "") -> DataError:
    """Build a :class:`DataError` for ``what`` not found/usable at ``path``, listing ``layouts``."""
    lines = [f"{what}: could not use {str(path)!r}" + (f" ({detail})" if detail else "") + "."]
    lines.append("Accepted layouts:")
    lines.extend(f"  - {layout}" for layout in layouts)
    return DataError("\n".join(lines))
