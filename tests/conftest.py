"""Shared fixtures: the offline data beside the repository and small deterministic models.

Under CI (``CI`` set to ``true``/``1``), a skipped test is a failure: a missing data folder or a
missing extra (onnx, onnxruntime, the EfficientNet weights package) must break the build, not hide
the tests that need it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# One intra-op thread: the test models are tiny, and on a busy 2-core machine OpenMP threads that
# spin against other processes make small ops orders of magnitude slower. Deterministic too.
torch.set_num_threads(1)

CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
SHARED_DATA = Path(os.environ.get("BITSWITCH_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"offline data not found at {SHARED_DATA} (set BITSWITCH_TEST_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_image_folder(shared_data: Path, tmp_path_factory) -> Path:
    """12 images of ``imagenet_samples`` relabelled into 4 classes (``byom_models:tiny_cnn``'s outputs):
    an ImageNet-style folder (``images/`` + ``labels.csv``) that ``bitswitch ptq`` reads in seconds."""
    import shutil

    src = shared_data / "imagenet_samples"
    dst = tmp_path_factory.mktemp("imgs")
    (dst / "images").mkdir()
    rows = ["filename,wnid,class_index"]
    for i, line in enumerate((src / "labels.csv").read_text().splitlines()[1:13]):
        name, wnid, _ = line.split(",")
        shutil.copy(src / "images" / name, dst / "images" / name)
        rows.append(f"{name},class{i % 4},{i % 4}")
    (dst / "labels.csv").write_text("\n".join(rows) + "\n")
    return dst


@pytest.fixture(scope="session")
def timm():
    """timm with ``tests/stubs/torchvision`` as its torchvision when the real one is absent.

    timm imports torchvision at load time; this machine has no CPU build of it, and bitswitch
    never needs it. The stand-in only satisfies those imports (see its docstring).
    """
    import importlib.util
    import sys

    if importlib.util.find_spec("torchvision") is None:
        sys.path.insert(0, str(REPO / "tests" / "stubs"))
    return pytest.importorskip("timm")


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("paper_comparisons")``: a script under ``benchmarks/`` as a module, with
    ``benchmarks/`` on the path while it loads (the scripts import their shared ``_common``)."""
    import importlib.util
    import sys

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_bench", REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(REPO / "benchmarks"))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(REPO / "benchmarks"))
        return module

    return load


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread: tiny models on shared cores are far faster that way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fail_skips_under_ci(report) -> None:
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skips_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level importorskip skips the whole module at collection
    _fail_skips_under_ci(outcome.get_result())


@pytest.fixture
def press_ctrl_c(monkeypatch):
    """``press_ctrl_c(n)``: a real SIGINT to this process right after the ``n``-th training step returns
    (Ctrl-C at a known step, so an interrupted run can be compared with an uninterrupted one)."""
    import signal

    from bitswitch.train import loop

    def press(n: int) -> None:
        real, calls = loop.train_step, []

        def step(*args, **kwargs):
            out = real(*args, **kwargs)
            calls.append(1)
            if len(calls) == n:
                os.kill(os.getpid(), signal.SIGINT)
            return out

        monkeypatch.setattr(loop, "train_step", step)

    return press
