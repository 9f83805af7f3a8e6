"""Progress of long work (training epochs, evaluation over bit-widths, Hessian iterations), with an estimate of the time left.

A tqdm bar on stderr when stderr is a terminal. Elsewhere (a log file, a CI job) a bar would be
noise, so it is silent, or, with ``lines_every=N``, one line every N steps saying how far it is
and about how long is left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping


class Progress:
    """Progress over ``total`` steps (``initial`` of them already done, as in a resumed epoch)."""

    def __init__(self, total: int, desc: str, enabled: bool | None = None, *, initial: int = 0, unit: str = "it", lines_every: int = 0):
        self.total, self.desc, self.unit, self.lines_every = total, desc, unit, lines_every
        self.done, self.start, self._first = initial, time.perf_counter(), initial
        self.bar = None
        if sys.stderr.isatty() if enabled is None else enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, postfix: Mapping[str, float | int | str] | None = None, n: int = 1) -> None:
        """``n`` more steps done; ``postfix`` (e.g. the last losses) is shown beside the bar."""
        self.done += n
        shown = {k: f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in (postfix or {}).items()}
        if self.bar is not None:
            if shown:
                self.bar.set_postfix(shown, refresh=False)
            self.bar.update(n)
        elif self.lines_every and (self.done % self.lines_every == 0 or self.done == self.total):
            rate = (time.perf_counter() - self.start) / max(self.done - self._first, 1)
            extra = "".join(f", {k} {v}" for k, v in shown.items())
            print(f"{self.desc}: {self.unit} {self.done} of {self.total}{extra}, about {rate * (self.total - self.done):.0f} s left", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Progress"]
