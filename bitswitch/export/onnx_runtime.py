"""Running an exported ONNX file in onnxruntime and checking it against the PyTorch model.

:func:`verify_onnx` is what ``bitswitch export`` runs after writing a file: top-1 agreement and the
largest output difference in units of an output step, against float32 PyTorch or a float64 copy.
:func:`executed_kernels` reads onnxruntime's profiler to say which kernels really ran (integer
``QLinearConv`` or float ``Conv``), which is what decides latency.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

INPUT_NAME = "input"
#: the name of the first graph output of an exported file (the one verification compares)
OUTPUT_NAME = "output"
#: default tolerance of :func:`verify_onnx`, in output steps (``max|y| / 127``): integer kernels may
#: land a code at a rounding tie one step away, which moves the output by about a step; a file
#: written at another precision than the model's is 10-20 steps off (as in Brevitas' export tests)
MAX_STEPS = 2.0


class VerificationError(RuntimeError):
    """The exported file disagrees with the PyTorch model beyond the tolerance."""


def require_module(name: str, purpose: str):
    """Import the optional package ``name`` or say how to install it (the ``export`` extra)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f"{purpose} needs the '{name}' package: pip install 'bitswitch[export]'") from None


def require_onnxruntime():
    """Import ``onnxruntime`` or explain how to get it."""
    return require_module("onnxruntime", "running exported models")


#: onnxruntime session option (since 1.13) that keeps u8s8 integer products exact on x86 CPUs without
#: VNNI. Their u8s8 kernels (``vpmaddubsw``) add pairs of uint8 x int8 products in int16 with
#: saturation, so with 8-bit activations a layer whose weight codes exceed +-64 can compute wrong
#: integers (``255 * 127 * 2 > 2^15``); with this option onnxruntime re-stores such weights as uint8
#: with zero point 128 at load time and uses its exact u8u8 kernels. CPUs with VNNI accumulate u8s8 in
#: int32 (exact) but onnxruntime converts the weights all the same, and the u8u8 kernels are slower
#: (ResNet-20 W8A8, batch 32, AVX-512 VNNI AMD EPYC: 28-31 ms with the option, 21-23 ms without), so
#: :func:`ort_session` sets it only where :func:`cpu_int8_path` is not ``"vnni"``.
EXACT_U8S8_OPTION = "session.x64quantprecision"


def ort_session(path: str | os.PathLike, threads: int | None = None, profile: bool = False, level: str = "all", spinning: bool = True,
                exact: bool | None = None):
    """An onnxruntime CPU session (``run_onnx(path, x, session=...)`` reuses one).

    ``spinning=False`` stops idle pool threads from busy-waiting: needed when several sessions run in
    turn in one process (a benchmark), where one session's spinning threads would take the cores the
    next one runs on. ``exact=None`` (default) sets :data:`EXACT_U8S8_OPTION` where the CPU needs it
    (:func:`cpu_int8_path` is not ``"vnni"``): without it the file's 8-bit integer layers can saturate
    on x86 CPUs without VNNI (AVX2-only machines such as AMD Zen 2/3); with VNNI it is exact anyway and
    the option only slows the 8-bit layers down. ``exact=True`` / ``False`` force it on / off, to
    measure what it costs or prevents.
    """
    ort = require_onnxruntime()
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the runtime's fusion notes are not the user's problem
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if exact is None:
        exact = cpu_int8_path() != "vnni"
    if exact:
        so.add_session_config_entry(EXACT_U8S8_OPTION, "1")
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort_profile")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@functools.cache  # the CPU does not change under a running process; ort_session asks for every session
def cpu_int8_path() -> str:
    """Which x86 int8 dot-product path this CPU gives onnxruntime: ``"vnni"`` (exact u8s8),
    ``"no-vnni"`` (u8s8 saturates in int16 without :data:`EXACT_U8S8_OPTION`), or ``"other"``
    (not x86 Linux, or unknown). Read from ``/proc/cpuinfo``; results files record it."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), [])
    except OSError:
        return "other"
    if not flags or "sse4_1" not in flags:
        return "other"
    return "vnni" if {"avx512_vnni", "avx_vnni"} & set(flags) else "no-vnni"


def onnx_feed(session, x: Any) -> dict[str, np.ndarray]:
    """The feed of ``session`` for ``x``: a tensor (the single input), a tuple of positional inputs, or a
    dict of keyword inputs (a tokenizer's output); integer tensors (token ids) keep their dtype."""
    names = [i.name for i in session.get_inputs()]

    def arr(v: Any) -> np.ndarray:
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            return v.numpy() if not v.is_floating_point() else v.float().numpy()
        return np.asarray(v, np.float32)

    if isinstance(x, Mapping):
        return {k: arr(x[k]) for k in names}
    values = list(x) if isinstance(x, (tuple, list)) else [x]
    if len(values) != len(names):
        raise ValueError(f"the file takes {len(names)} inputs ({', '.join(names)}), got {len(values)}")
    return dict(zip(names, (arr(v) for v in values)))


def run_onnx(path: str | os.PathLike, x: Any, session=None) -> np.ndarray:
    """Run the exported file on ``x`` (see :func:`onnx_feed`) in onnxruntime (CPU); its first output.

    A file exported with a fixed batch size is run in chunks of that size."""
    sess = session or ort_session(path)
    feed = onnx_feed(sess, x)
    batch = sess.get_inputs()[0].shape[0]
    n = next(iter(feed.values())).shape[0]
    if isinstance(batch, int) and batch != n and n % batch == 0:
        parts = [sess.run(None, {k: v[i: i + batch] for k, v in feed.items()})[0] for i in range(0, n, batch)]
        return np.concatenate(parts)
    return sess.run(None, feed)[0]


def executed_kernels(path: str | os.PathLike, x: torch.Tensor | np.ndarray, threads: int | None = None) -> dict[str, int]:
    """Which kernels onnxruntime actually ran (after its graph fusions), from its profiler.

    Returns ``{op_type: number of nodes}``; integer kernels show up as ``QLinearConv``,
    ``QLinearMatMul``, ``QGemm``, ``QLinearAdd``..., float ones as ``Conv``/``FusedConv``/``NchwcConv``.
    """
    sess = ort_session(path, threads=threads, profile=True)
    run_onnx(path, x, sess)
    prof = sess.end_profiling()
    events = json.loads(Path(prof).read_text())
    nodes: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and "op_name" in e.get("args", {}):
            nodes[e["name"].rsplit("_kernel_time", 1)[0]] = e["args"]["op_name"]
    Path(prof).unlink(missing_ok=True)
    return dict(sorted(Counter(nodes.values()).items()))


INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu")


@dataclass
class Agreement:
    images: int  # inputs compared (each may hold many predictions: one per token of a language model)
    top1_agreement: float  # over every prediction: per input, or per position of a (batch, tokens, vocab) output
    max_abs_diff: float
    output_step: float  # the step of an INT8 quantizer of the reference output: max|y| / 127
    max_diff_steps: float
    mean_diff_steps: float
    passed: bool
    min_top1: float
    max_steps: float
    reference: str = "float32"
    #: distinct top-1 answers of the reference: agreement on inputs that all get one answer says little
    distinct_top1: int = 0
    #: with labelled batches ``(x, y)``: top-1 accuracy (%) of the file and of the PyTorch reference
    file_accuracy: float | None = None
    model_accuracy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "OK" if self.passed else "FAILED"
        return (f"{verdict}: onnxruntime vs PyTorch ({self.reference}) on {self.images} inputs: top-1 agreement {100 * self.top1_agreement:.2f} % "
                f"(need >= {100 * self.min_top1:.2f} %; {self.distinct_top1} distinct answers), max |diff| {self.max_abs_diff:.3g} = {self.max_diff_steps:.2f} output steps "
                f"(need <= {self.max_steps:g}; step = max|y|/127 = {self.output_step:.3g})"
                + ("" if self.file_accuracy is None else f"; top-1 accuracy: file {self.file_accuracy:.2f} %, PyTorch {self.model_accuracy:.2f} %"))


def reference_model(model: nn.Module, reference: str) -> tuple[nn.Module, torch.dtype]:
    """``(module, input dtype)`` PyTorch evaluates when a file is checked against ``model``: the model
    itself for ``"float32"``, a float64 copy for ``"float64"`` (``model`` is left as it is)."""
    if reference not in ("float32", "float64"):
        raise ValueError(f"reference must be 'float32' or 'float64', got {reference!r}")
    model.eval()
    if reference == "float64":
        return copy.deepcopy(model).double().eval(), torch.float64
    return model, torch.float32


def model_input(batch: Any) -> Any:
    """The model input of one verification batch: a data loader's ``(x, y)`` pair gives ``x``; a tensor
    or a dict of keyword inputs is itself."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def labels(batch: Any) -> torch.Tensor | None:
    """The integer labels of an ``(x, y)`` batch, else ``None``."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor) and not batch[1].is_floating_point():
        return batch[1]
    return None


def run_reference(model: nn.Module, x: Any, dtype: torch.dtype) -> torch.Tensor:
    """``model`` on ``x`` with floating inputs in ``dtype`` (token ids stay integers); its output
    tensor (:func:`~bitswitch.nn.dataflow.output_tensor`: ``logits`` of a Hugging Face output) as float32."""
    from ..nn.dataflow import output_tensor, run_model

    def cast(v: Any) -> Any:
        return v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    x = {k: cast(v) for k, v in x.items()} if isinstance(x, Mapping) else cast(x)
    return output_tensor(run_model(model, x)).float()


def batch_size(x: Any) -> int:
    from ..nn.convert import first_tensor

    return int(first_tensor(x).shape[0])


@torch.no_grad()
def verify_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    batches: Iterable[Any],
    *,
    min_top1: float = 0.995,
    max_steps: float = MAX_STEPS,
    raise_on_failure: bool = True,
    reference: str = "float32",
) -> Agreement:
    """Run the exported file in onnxruntime on real inputs and compare with the PyTorch model.

    ``batches`` yields tensors, ``(x, y)`` pairs or dicts of keyword inputs; with integer labels ``y``
    the result also has both top-1 accuracies (what a user compares: the file's and the model's). Differences are measured
    in units of the output step ``max|y_ref| / 127`` (the step an INT8 quantizer of the outputs would
    have), so the tolerance means the same for any model scale; the default ``max_steps=2`` allows an
    activation code at a rounding tie to land one step away (integer kernels requantize with a float
    multiplier instead of PyTorch's division) and catches a file written at another precision (a W8
    file against the model at W4 is ~20 steps off). Top-1 agreement is over the last dimension of the
    first output: per input for ``(batch, classes)``, per position (next token) for ``(batch, tokens,
    vocab)``; choose inputs whose answers vary (``Agreement.distinct_top1``).
    ``reference="float64"`` evaluates a float64 copy of the model instead (``model`` is left as it
    is): near-exact arithmetic, so only the file's own rounding is measured. Use it for models so
    sensitive that PyTorch's float32 result changes with the summation order (a 4-bit AdaRound
    EfficientNet-Lite0 flips 0.8 % of its top-1 answers between contiguous and channels-last).
    Raises :class:`VerificationError` when top-1 agreement or the maximum difference is out of bounds.
    """
    ref_model, dtype = reference_model(model, reference)
    sess = ort_session(path)
    agree = predictions = total = 0
    max_diff, sum_diff, n_vals, ymax = 0.0, 0.0, 0, 0.0
    answers: set[int] = set()
    correct: list[int] | None = [0, 0]  # file, reference; None once a batch has no labels
    for batch in batches:
        x = model_input(batch)
        ref = run_reference(ref_model, x, dtype)
        got = torch.from_numpy(run_onnx(path, x, sess))
        if got.shape != ref.shape:
            raise VerificationError(f"onnxruntime output shape {tuple(got.shape)} differs from PyTorch {tuple(ref.shape)}")
        d = (got - ref).abs()
        max_diff = max(max_diff, float(d.max()))
        sum_diff += float(d.sum())
        n_vals += d.numel()
        ymax = max(ymax, float(ref.abs().max()))
        if ref.dim() >= 2 and ref.shape[-1] > 1:
            top = ref.argmax(-1)
            agree += int((got.argmax(-1) == top).sum())
            predictions += top.numel()
            answers.update(top.unique().tolist())
            y = labels(batch)
            if correct is not None and y is not None and y.shape == top.shape:
                correct = [correct[0] + int((got.argmax(-1) == y).sum()), correct[1] + int((top == y).sum())]
            else:
                correct = None
        total += batch_size(x)
    if total == 0:
        raise ValueError("verification needs at least one input batch")
    step = ymax / 127 if ymax > 0 else 1.0
    res = Agreement(total, agree / predictions if predictions else 1.0, max_diff, step, max_diff / step, sum_diff / max(n_vals, 1) / step, False,
                    min_top1, max_steps, reference, len(answers))
    if correct is not None and predictions:
        res.file_accuracy, res.model_accuracy = 100.0 * correct[0] / predictions, 100.0 * correct[1] / predictions
    res.passed = res.top1_agreement >= min_top1 and res.max_diff_steps <= max_steps and math.isfinite(max_diff)
    if raise_on_failure and not res.passed:
        raise VerificationError(res.summary())
    return res


__all__ = ["INPUT_NAME", "INTEGER_KERNELS", "MAX_STEPS", "OUTPUT_NAME", "Agreement", "VerificationError", "executed_kernels", "onnx_feed", "ort_session",
           "require_module", "require_onnxruntime", "run_onnx", "verify_onnx"]
