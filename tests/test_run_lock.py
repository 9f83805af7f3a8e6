"""Runs own their folder: a second run or resume is refused while one runs (issue 17)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bitswitch.errors import RunLockedError
from bitswitch.train import TrainConfig, train
from bitswitch.train.lock import RunLock

REPO = Path(__file__).resolve().parents[1]  # subprocesses import this checkout
HOLDER = "import sys, time; from bitswitch.train.lock import RunLock; l = RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(60)"


def _hold(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def test_second_run_and_resume_are_refused_naming_the_other_process(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = TrainConfig.from_dict({"dataset": "digits", "model": "digits_cnn", "out_dir": str(out), "epochs": 1,
                                 "train_subset": 200, "progress": False, "num_threads": 1})
    other = _hold(out)
    try:
        with pytest.raises(RunLockedError, match=rf"in use by another bitswitch run \(process id {other.pid}\)"):
            RunLock(out)
        for resume in (False, True):
            with pytest.raises(RunLockedError, match=str(other.pid)):
                train(cfg, resume=resume)
    finally:
        other.kill()
        other.wait()
    # the kernel dropped the killed process's lock: the folder is free again
    with RunLock(out):
        pass


def test_lock_removes_stale_temporaries_of_killed_writes(tmp_path: Path) -> None:
    stale = tmp_path / ".best.safetensors.abc123.tmp"
    stale.write_bytes(b"half a file")
    keep = tmp_path / "best.safetensors"
    keep.write_bytes(b"x")
    with RunLock(tmp_path):
        assert not stale.exists() and keep.exists()
