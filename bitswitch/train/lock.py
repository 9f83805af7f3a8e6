"""A run owns its folder: an exclusive ``flock`` on ``<out_dir>/.lock`` for as long as it runs.

Two runs (or a ``--resume`` while the run is still going) in one folder would interleave their
metrics, configs and checkpoints. The second is refused with the first one's process id. The lock
is released by the kernel when the process dies, even by ``kill -9``, so a stale lock never blocks
a later run; the lock file itself stays (deleting it would race with a starting run). Once the lock
is held, temporary files of killed writes are removed.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import RunLockedError
from ..export.atomic import remove_stale_temporaries

LOCK_FILE = ".lock"


class RunLock:
    """Holds the lock of ``folder`` from construction until :meth:`release` (or the ``with`` block's end)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise RunLockedError(f"{self.folder} is in use by another bitswitch run (process id {other}); "
                                 "wait for it to end or choose another out_dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temporaries(self.folder)

    def release(self) -> None:
        """Unlock; a folder this lock created and nothing else wrote to (a run that failed early) is removed."""
        if self._fd is not None:
            lock_file = self.folder / LOCK_FILE
            if self._created and [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
                lock_file.unlink(missing_ok=True)
                self.folder.rmdir()
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["LOCK_FILE", "RunLock"]
