"""Ctrl-C during training: finish the current step, save the state there, and say how to resume.

A ``KeyboardInterrupt`` raised in the middle of a step would leave the model and the optimizer
half-updated (a per-bit step is several optimizer steps), so the first Ctrl-C only *requests* a
stop (:class:`StopRequest`); the loop checks it between steps, writes the resumable state at that
step (mid-epoch: the batches already done are skipped on resume, the loader's order being a function
of ``(seed, epoch)``) and raises :class:`TrainingInterrupted`. A second Ctrl-C interrupts at once;
the state on disk is then the last one written (the end of the last finished epoch).
"""

from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any


class StopRequest:
    """While active (``with``), the first SIGINT sets :attr:`requested` instead of raising.

    Inactive outside the main thread (Python delivers signals there only) or when ``enabled`` is
    false (under torchrun, where every process would have to agree on the step to stop at).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C interrupts at once

    def __enter__(self) -> StopRequest:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled and signal.getsignal(signal.SIGINT) == self._handler:
            signal.signal(signal.SIGINT, self._previous)


def resume_command(out_dir: str | Path) -> str:
    """The exact command that continues the run in ``out_dir``."""
    return f"bitswitch train --resume {shlex.quote(str(out_dir))}"


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :func:`~bitswitch.train.train` after a Ctrl-C, once the state is saved.

    A ``KeyboardInterrupt``, so a caller that does not catch it stops as on any Ctrl-C; ``str()``
    is the one line the command line prints (what was saved, and the resume command).
    """

    def __init__(self, out_dir: Path, state_file: Path, step: int, epoch: int, batch: int, steps_per_epoch: int):
        self.out_dir, self.state_file, self.step = out_dir, state_file, step
        self.epoch, self.batch, self.steps_per_epoch = epoch, batch, steps_per_epoch
        where = f"epoch {epoch + 1}, batch {batch} of {steps_per_epoch}" if batch else f"the end of epoch {epoch}"
        super().__init__(f"interrupted after step {step} ({where}); saved the training state to {state_file}; "
                         f"resume with: {resume_command(out_dir)}")


__all__ = ["StopRequest", "TrainingInterrupted", "resume_command"]
