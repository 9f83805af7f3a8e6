"""DDP under torchrun: 2 CPU processes (gloo) give the same model as 1 process with the same global batch.

The model has no BatchNorm, because per-process BatchNorm statistics legitimately differ from the
single-process ones (as with DistributedDataParallel without SyncBatchNorm); everything else (data
order and sharding, gradient averaging across per-bit steps, ALRS, Adam) must agree up to float
summation order.
"""

from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bitswitch.train.state import read_state

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    from bitswitch.models import available, register
    from bitswitch.train import TrainConfig, train

    class Net(nn.Module):
        def __init__(self, num_classes=10, in_features=64):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, num_classes))
        def forward(self, x):
            return self.net(x)

    if "ddp_test_mlp" not in available():
        register("ddp_test_mlp")(Net)

    cfg = TrainConfig(mode="joint", bits=[8, 4, 2], model="ddp_test_mlp", dataset="digits", train_subset=600, batch_size=64,
                      epochs=1, lr=3e-3, calib_batches=2, progress=False, num_threads=1, out_dir=sys.argv[1])
    train(cfg)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> None:
    # the script lives in tmp_path, so without PYTHONPATH it would import the installed bitswitch, not this checkout
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    argv = sys.argv
    try:  # the single-process reference runs in this process (saves one interpreter start-up)
        sys.argv = [str(script), str(tmp_path / "single")]
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    _run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
          "--master_port", str(_free_port()), str(script), str(tmp_path / "ddp")])
    single, _ = read_state(tmp_path / "single" / "state.safetensors")
    multi, meta = read_state(tmp_path / "ddp" / "state.safetensors")
    assert meta["info"]["step"] == 8  # 540 training images // 64: the global batch, not the per-process one
    model_keys = [k for k in single if k.startswith("model.")]
    assert model_keys and set(model_keys) == {k for k in multi if k.startswith("model.")}
    for k in model_keys:
        torch.testing.assert_close(multi[k], single[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    init_w = single["model.net.3.weight"]
    assert not (tmp_path / "ddp" / "state.safetensors").samefile(tmp_path / "single" / "state.safetensors")
    assert init_w.abs().sum() > 0
