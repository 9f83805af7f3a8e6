"""A tiny on-disk cache of decoded uint8 arrays (``.npz``), written atomically."""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

__all__ = ["cache_dir", "cache_key", "load_cached", "save_cached"]

CACHE_VERSION = 1


def cache_dir(override: str | Path | None = None) -> Path:
    """``override``, else ``$BITSWITCH_CACHE``, else ``~/.cache/bitswitch``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("BITSWITCH_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "bitswitch"


def cache_key(*parts: object) -> str:
    """A short stable hex digest of ``parts`` (stringified)."""
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}".encode())
    for p in parts:
        h.update(b"\x00")
        h.update(str(p).encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:20]


def file_fingerprint(path: Path) -> tuple[str, int, int]:
    """``(resolved path, size, mtime_ns)`` of a file."""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def load_cached(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays stored at ``path``, or ``None`` when absent or unreadable (a corrupt cache is ignored)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - any damage means "rebuild"
        warnings.warn(f"ignoring unreadable cache file {str(path)!r}: {exc}", stacklevel=3)
        return None


def save_cached(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Write ``arrays`` to ``path`` atomically (temp file in the same folder + ``os.replace``).

    Returns False (with a warning) when the cache folder is not writable; loading still works.
    """
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp creates 0600; use the usual file mode
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        return True
    except OSError as exc:
        warnings.warn(f"could not write cache file {str(path)!r}: {exc}", stacklevel=3)
        return False
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
