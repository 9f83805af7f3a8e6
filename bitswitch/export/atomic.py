"""Atomic file writes: a reader never sees a half-written file, and a killed write leaves at most a
hidden ``.<name>.*.tmp`` file that :func:`remove_stale_temporaries` deletes at the next start.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then move the file into place; no half-written ``path`` ever exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600; the result gets the mode of the file it replaces, or the
    # umask's default for a new file (as open() would give), not a private file by accident
    mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON through :func:`atomic_write_bytes` (results, configs, caches)."""
    text = json.dumps(obj, indent=indent)
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))
    return Path(path)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files killed writes left in ``folder``; returns what was removed.

    Call it only while holding the folder's run lock, so no live writer's file is removed.
    """
    removed = []
    for p in Path(folder).glob(f".*{TMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


__all__ = ["atomic_write_bytes", "atomic_write_json", "remove_stale_temporaries"]
