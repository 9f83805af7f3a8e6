"""The phase-1 cache file: accumulated SQNR sums, signed and checked before a run resumes from it.

A cache made for another model, data or candidate set (another ``fingerprint``) is ignored and the
run starts over; a cache that was damaged or edited (digest mismatch, wrong types, negative or
non-finite sums, groups or candidates this run does not have) is refused with a ``ValueError``,
since resuming from it would silently change the result.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..export.atomic import atomic_write_bytes

KEYS = {"fingerprint", "chunks_done", "signal", "noise"}


def _digest(state: Mapping[str, Any]) -> str:
    body = {k: state[k] for k in KEYS}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_cache(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    data = json.dumps({**{k: state[k] for k in KEYS}, "sha256": _digest(state)}).encode()
    atomic_write_bytes(path, lambda p: Path(p).write_bytes(data))


def _finite_sum(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def read_cache(path: str | os.PathLike, fingerprint: str, chunks: int, work: Mapping[str, Sequence[str]]) -> dict[str, Any] | None:
    """The cached state for this run, ``None`` if the cache belongs to another run; ``ValueError`` if damaged.

    ``work`` maps each group name to the candidate keys (``W4A8``...) this run evaluates.
    """
    path = Path(path)
    bad = f"{path}: damaged or edited phase-1 cache ({{}}); delete it to start phase 1 over"
    try:
        state = json.loads(path.read_text(), parse_constant=lambda c: float("nan"))
    except (ValueError, RecursionError) as e:
        raise ValueError(bad.format(f"not valid JSON: {e}")) from None
    if not isinstance(state, dict) or set(state) != KEYS | {"sha256"}:
        raise ValueError(bad.format(f"keys must be {sorted(KEYS | {'sha256'})}"))
    if state["sha256"] != _digest(state):
        raise ValueError(bad.format("checksum mismatch"))
    if state["fingerprint"] != fingerprint:
        return None
    done, noise = state["chunks_done"], state["noise"]
    if not (isinstance(done, int) and not isinstance(done, bool) and 0 <= done <= chunks):
        raise ValueError(bad.format(f"chunks_done must be an integer in [0, {chunks}], got {done!r}"))
    if not _finite_sum(state["signal"]) or not isinstance(noise, dict):
        raise ValueError(bad.format("signal must be a finite non-negative number and noise an object"))
    for group, sums in noise.items():
        if group not in work or not isinstance(sums, dict):
            raise ValueError(bad.format(f"noise.{group}: not a quantizer group of this model"))
        for key, v in sums.items():
            if key not in work[group] or not _finite_sum(v):
                raise ValueError(bad.format(f"noise.{group}.{key}: not a candidate of this group, or not a finite non-negative sum"))
    if done and any(set(noise.get(g, {})) != set(keys) for g, keys in work.items()):
        raise ValueError(bad.format("noise sums are missing for some group or candidate"))
    return {k: state[k] for k in KEYS}


__all__ = ["read_cache", "write_cache"]
