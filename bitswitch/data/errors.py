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


#: PIL modes whose values exceed 8 bits; ``convert("RGB")`` would clip them to 255 silently
WIDE_IMAGE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def require_8bit(mode: str, name: str) -> None:
    """Refuse 16-bit and float images: bitswitch reads 8-bit images only, and clipping would be silent."""
    if mode in WIDE_IMAGE_MODES:
        raise DataError(f"image {name!r} has PIL mode {mode!r} (16-bit or float); bitswitch reads 8-bit images only: convert it to 8 bits first")
