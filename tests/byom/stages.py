"""The stages of the matrix: each runs one bitswitch workflow step on one model through the public API.

A stage takes a :class:`~byom.models.Case`, raises (``AssertionError`` or the library's own error)
when the step does not work, and otherwise returns what it measured (for the benchmark table).
Agreement with FP32 is measured in *output steps* (``max|y_fp32| / 127``, the step of an INT8
quantizer of the logits, as :func:`bitswitch.export.verify_onnx` does) and in top-1 / next-token
agreement over every sample and position of a held-out batch.
"""

from __future__ import annotations

import copy
import functools
import math
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import bitswitch
from bitswitch.export import read_checkpoint
from bitswitch.nn.batchnorm import SwitchableBatchNorm
from bitswitch.nn.dataflow import run_model

from .models import Case, logits, loss, predictions, targets

BITS = (8, 6, 4, 2)
#: ONNX Runtime against PyTorch at W8 (the tight default the issue asks for)
EXPORT_MAX_STEPS = 2.0
#: seeds of the example batches: calibration, a held-out batch for the other checks, and the switch
#: cell's agreement batches (64 images, or 32 sequences)
CALIBRATION_SEEDS = (1, 2)
HELD_OUT = 3
HELD_OUT_SEEDS = (3, 7, 8, 9)
CALIBRATION_SAMPLE = 1 << 14  # activation values sampled per layer: plenty for tiny models, and fast


# --- helpers ----------------------------------------------------------------------------------------

def output(model: nn.Module, inputs: Any) -> torch.Tensor:
    with torch.no_grad():
        return logits(run_model(model, inputs)).float()


def compare(case: Case, got: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max and mean |difference| in output steps, and top-1 / next-token agreement of ``got`` with ``ref``."""
    step = float(ref.abs().max()) / 127
    return {
        "max_steps": float((got - ref).abs().max()) / step,
        "mean_steps": float((got - ref).abs().mean()) / step,
        "agreement": float((predictions(case, got) == predictions(case, ref)).float().mean()),
    }


def held_out(case: Case) -> Any:
    """The batches of ``HELD_OUT_SEEDS`` as one batch (tensors, or dicts of tensors, concatenated)."""
    parts = [case.inputs(s) for s in HELD_OUT_SEEDS]
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv1d/Conv2d/Linear (subclasses included) and HF ``Conv1D``: what conversion must cover."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) or type(m).__name__ == "Conv1D"}


def call_order(model: nn.Module, inputs: Any) -> list[str]:
    """Weight layers in the order the forward pass first calls them."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda *_a, n=n: order.append(n) if n not in order else None) for n, m in weight_layers(model).items()]
    try:
        output(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return order


def bn_producers(model: nn.Module, inputs: Any) -> dict[str, str]:
    """BatchNorm -> the weight layer whose output it normalises, from one forward pass."""
    made: dict[int, str] = {}
    fed: dict[str, str] = {}
    hooks = [m.register_forward_hook(lambda _m, _a, out, n=n: made.__setitem__(id(out), n)) for n, m in weight_layers(model).items()]
    hooks += [m.register_forward_pre_hook(lambda _m, args, n=n: fed.__setitem__(n, made.get(id(args[0]), "")))
              for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        output(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return {bn: src for bn, src in fed.items() if src}


def tied_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Parameter names that share one tensor (a tied LM head and embedding)."""
    seen: dict[int, str] = {}
    pairs = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            pairs.append((seen[id(p)], name))
        seen.setdefault(id(p), name)
    return pairs


def assert_still_tied(fp: nn.Module, model: nn.Module) -> None:
    """Weights the FP32 model ties are one tensor in ``model`` too (one module owning both names)."""
    for a, b in tied_pairs(fp):
        ma, mb = model.get_submodule(a.rpartition(".")[0]), model.get_submodule(b.rpartition(".")[0])
        wa, wb = dict(ma.named_parameters(recurse=False)).get(a.rpartition(".")[2]), dict(mb.named_parameters(recurse=False)).get(b.rpartition(".")[2])
        assert wa is not None and wa is wb, f"{a} and {b} are tied in the FP32 model but not after conversion"


def unique_bytes(model: nn.Module) -> int:
    """Bytes of the model's FP32 state, each shared tensor counted once (the honest FP32 size)."""
    seen: dict[int, int] = {}
    for t in model.state_dict(keep_vars=True).values():
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def assert_integer_storage(path: Path, names: Iterable[str]) -> None:
    """Every quantized layer's weight is in the file as integer codes only, with no FP32 copy."""
    tensors, _ = read_checkpoint(path)
    floats = [n for n in names if f"{n}.weight" in tensors or tensors.get(f"{n}.weight_int", torch.zeros(0)).is_floating_point()]
    assert not floats, f"FP32 weights stored for quantized layers {floats[:5]} ({len(floats)})"


def finite(t: torch.Tensor, what: str) -> None:
    assert torch.isfinite(t).all(), f"{what}: non-finite values"


# --- shared preparation ---------------------------------------------------------------------------

# The stages after ``quantize`` start from the plainest conversion call, ``quantize(model, bits)``,
# so that each cell measures its own stage; the ``quantize`` cell checks the full conversion API.
# Cached per case (cases are fixed, inputs come from fixed seeds); callers get fresh copies.

@functools.cache
def _calibrated(case: Case) -> tuple[nn.Module, nn.Module, dict[str, dict[str, Any]]]:
    fp = case.build()
    q = bitswitch.quantize(fp, BITS)
    stats = bitswitch.calibrate(q, [case.inputs(s) for s in CALIBRATION_SEEDS], sample_size=CALIBRATION_SAMPLE)
    return fp, q, stats


def calibrated(case: Case) -> tuple[nn.Module, nn.Module]:
    """``(FP32 model, converted and calibrated copy)``, fresh copies on every call."""
    fp, q, _ = _calibrated(case)
    return copy.deepcopy(fp), copy.deepcopy(q)


# --- stages -----------------------------------------------------------------------------------------

def stage_quantize(case: Case) -> dict[str, Any]:
    """Every weight layer is quantized or kept FP32 (none skipped), the FP32 defaults are the ones
    agreed (first and last layer the data flows through; for a model with embeddings, the embeddings
    and the head only), tied weights stay tied, and each BatchNorm follows the layer that feeds it."""
    fp = case.build()
    x = case.inputs(0)
    q = bitswitch.quantize(fp, BITS, example_inputs=x)
    rows = bitswitch.conversion_report(q)
    actions = {r["name"]: r["action"] for r in rows}
    layers = weight_layers(fp)
    skipped = [n for n in layers if actions.get(n) not in ("quantized", "fp32", "weight-only")]
    assert not skipped, f"weight layers left out of the conversion: {skipped[:5]} ({len(skipped)}): {[actions.get(n) for n in skipped[:5]]}"
    assert set(q.bitswitch_config.quantized) == {n for n, a in actions.items() if a == "quantized"}
    order = call_order(fp, x)
    kept = {n for n in layers if actions[n] == "fp32"}
    if any(isinstance(m, nn.Embedding) for m in fp.modules()):
        embeddings = {n for n, m in fp.named_modules() if isinstance(m, nn.Embedding)}
        assert all(actions.get(n) == "fp32" for n in embeddings), f"embeddings not kept FP32: {[(n, actions.get(n)) for n in embeddings]}"
        assert kept <= {order[-1]}, f"a transformer keeps only its embeddings and head ({order[-1]}) in FP32, not {sorted(kept - {order[-1]})}"
    else:
        assert kept == {order[0], order[-1]}, f"FP32 layers {sorted(kept)}; the data flows first through {order[0]!r} and last through {order[-1]!r}"
    assert_still_tied(fp, q)
    switchable = {n: m.source for n, m in q.named_modules() if isinstance(m, SwitchableBatchNorm)}
    want = {bn: src for bn, src in bn_producers(fp, x).items() if src in q.bitswitch_config.quantized}
    assert switchable == want, f"BatchNorm -> source layer {switchable}, the data flow says {want}"
    return {"quantized": len(q.bitswitch_config.quantized), "fp32": len(kept)}


def stage_calibrate(case: Case) -> dict[str, Any]:
    """Calibration on the example batches sets finite, positive scales for every quantized layer."""
    _, q, stats = _calibrated(case)
    q = copy.deepcopy(q)
    assert set(stats) == set(bitswitch.quantized_layers(q))
    for name, s in stats.items():
        bad = {b: v for b, v in s["act_scales"].items() if not (math.isfinite(v) and v > 0)}
        assert not bad, f"{name}: activation scales {bad}"
    bitswitch.set_precision(q, BITS[0])
    finite(output(q, case.inputs(HELD_OUT)), "W8 output after calibration")
    return {"layers": len(stats)}


def stage_switch(case: Case) -> dict[str, Any]:
    """Every bit-width runs; outputs differ between bit-widths and drift further from FP32 as bits
    fall; W8 stays close to FP32 (mean output steps, top-1 / next-token agreement); quantization
    off gives the FP32 outputs back."""
    fp, q = calibrated(case)
    x = held_out(case)
    ref = output(fp, x)
    got = {}
    for b in BITS:
        bitswitch.set_precision(q, b)
        got[b] = output(q, x)
        finite(got[b], f"W{b} output")
    cmp = {b: compare(case, got[b], ref) for b in BITS}
    for hi, lo in zip(BITS, BITS[1:]):
        assert not torch.equal(got[hi], got[lo]), f"W{hi} and W{lo} give identical outputs: the switch did nothing"
    # further from FP32 as bits fall (below W4 a sensitive random-init model is saturated: only W2 > W8)
    for hi, lo in [(8, 6), (6, 4), (8, 2)]:
        assert cmp[lo]["mean_steps"] > cmp[hi]["mean_steps"], f"W{lo} is no further from FP32 than W{hi}: {cmp}"
    w8, (min_agreement, max_steps) = cmp[8], case.w8_bounds
    assert w8["agreement"] >= min_agreement and w8["mean_steps"] <= max_steps, (
        f"W8 vs FP32: agreement {w8['agreement']:.3f} (need >= {min_agreement}), "
        f"mean |diff| {w8['mean_steps']:.2f} output steps (need <= {max_steps})")
    bitswitch.set_precision(q, None)
    off = compare(case, output(q, x), ref)
    assert off["max_steps"] <= 0.01, f"with quantization off the model is {off['max_steps']:.3g} output steps from FP32"
    return {"w8_agreement": w8["agreement"], "w8_mean_steps": w8["mean_steps"], "w2_mean_steps": cmp[BITS[-1]]["mean_steps"]}


def stage_saveload(case: Case) -> dict[str, Any]:
    """The integer checkpoint reloads into a fresh FP32 model bit-identically at every bit-width."""
    fp, q = calibrated(case)
    x = case.inputs(HELD_OUT)
    with tempfile.TemporaryDirectory() as tmp:
        path = bitswitch.save(q, Path(tmp) / "model.safetensors")
        size = path.stat().st_size
        assert_integer_storage(path, q.bitswitch_config.quantized)
        loaded = bitswitch.load(path, model=case.build())
    for b in BITS:
        bitswitch.set_precision(q, b)
        bitswitch.set_precision(loaded, b)
        assert torch.equal(output(q, x), output(loaded, x)), f"W{b}: reloaded model differs"
    assert_still_tied(fp, loaded)
    return {"file_bytes": size, "fp32_bytes": unique_bytes(fp), "size_ratio": size / unique_bytes(fp)}


def stage_train(case: Case) -> dict[str, Any]:
    """A few joint steps (every bit-width, highest first) with ALRS groups, in a plain loop: a finite
    loss for every bit-width, every quantized weight updated, tied weights still one tensor."""
    from bitswitch.train import alrs_param_groups, joint_step

    fp, q = calibrated(case)
    q.train()
    x = case.inputs(4)
    y = targets(case, x, 4)
    # the batch as a loader yields it: (inputs, targets), or the tokenizer's dict with its labels
    batch = {**x, "labels": y} if isinstance(x, dict) else (x, y)
    labels = (lambda b: b["labels"]) if isinstance(x, dict) else (lambda b: b[1])
    before = {n: p.detach().clone() for n, p in q.named_parameters()}
    optimizer = torch.optim.Adam(alrs_param_groups(q, lr=1e-3))
    history = [joint_step(q, batch, lambda out, b: loss(case, out, labels(b)), optimizer) for _ in range(4)]
    assert all(set(h) == set(BITS) for h in history), f"per-bit losses {history[0]}"
    assert all(math.isfinite(v) for h in history for v in h.values()), f"losses {history}"
    changed = {n for n, p in q.named_parameters() if not torch.equal(before[n], p.detach())}
    unchanged = [n for n in q.bitswitch_config.quantized if not any(c.startswith(f"{n}.") for c in changed)]
    assert not unchanged, f"no parameter of {unchanged[:5]} changed"
    assert_still_tied(fp, q)
    return {"loss_first": sum(history[0].values()), "loss_last": sum(history[-1].values())}


def stage_search(case: Case) -> dict[str, Any]:
    """Hessian traces of every quantized layer, layer costs from the example inputs, an ILP config."""
    from bitswitch.search import SearchProblem, hessian_traces, sensitivity

    _, q = calibrated(case)
    x = case.inputs(5)
    traces = hessian_traces(q, [(x, targets(case, x, 5))], loss_fn=lambda out, t: loss(case, out, t), max_iter=4, tol=0.2)
    quantized_names = set(q.bitswitch_config.quantized)
    assert set(traces) == quantized_names
    assert all(math.isfinite(t.trace) for t in traces.values())
    costs = bitswitch.layer_costs(q, x)
    result = SearchProblem(costs, sensitivity(traces), BITS).solve("avg-bits=5")
    assert set(result.config) == quantized_names
    mean_bits = sum(w for w, _ in result.config.values()) / len(result.config)
    assert mean_bits <= 5
    bitswitch.set_precision(q, dict(result.config))
    finite(output(q, case.inputs(HELD_OUT)), "searched configuration's output")
    return {"mean_bits": mean_bits}


def stage_ptq(case: Case) -> dict[str, Any]:
    """Post-training mixed precision on the example batches; the result saves and reopens bit-identically."""
    from bitswitch.ptq import PTQConfig, run_ptq

    fp = case.build()
    config = PTQConfig(candidates=((8, 8), (4, 8)), sample_size=CALIBRATION_SAMPLE, progress=False)
    model, _ = run_ptq(fp, [case.inputs(s) for s in CALIBRATION_SEEDS], config, budget=0.4)  # BOPs of all-W8A16 = 1
    x = case.inputs(HELD_OUT)
    got = output(model, x)
    finite(got, "PTQ output")
    cmp = compare(case, got, output(fp, x))
    with tempfile.TemporaryDirectory() as tmp:
        path = bitswitch.save(model, Path(tmp) / "ptq.safetensors")
        size = path.stat().st_size
        loaded = bitswitch.load(path, model=case.build())
        assert_integer_storage(path, model.bitswitch_config.quantized)
    assert torch.equal(output(loaded, x), got), "reopened PTQ model differs"
    return {"agreement": cmp["agreement"], "size_ratio": size / unique_bytes(fp)}


def stage_export(case: Case) -> dict[str, Any]:
    """W8 QDQ ONNX that onnxruntime runs within 2 output steps of PyTorch, and that the default
    verification refuses when checked against the model switched to W4.

    Exported with ``snap_bias`` (the documented deployment path): an integer kernel adds its bias on
    the ``s_x * s_w`` grid, up to half a step (0.009 output steps measured on MobileNetV3) from the
    model's; that flips codes at rounding ties, and the squeeze-excite nets amplify a 0.1 % flip
    rate in block 1 into ~36 output steps. With the model's bias snapped onto that grid every
    layer's input codes match onnxruntime's exactly."""
    from bitswitch.export import VerificationError, export_onnx, verify_onnx

    _, q = calibrated(case)
    bitswitch.set_precision(q, 8)
    x = case.inputs(HELD_OUT)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(q, path, example_inputs=x, snap_bias=True)
        agreement = verify_onnx(q, path, [x, case.inputs(6)], max_steps=EXPORT_MAX_STEPS)
        bitswitch.set_precision(q, 4)
        try:
            wrong = verify_onnx(q, path, [x, case.inputs(6)])
        except VerificationError:
            pass
        else:
            raise AssertionError(f"a W8 file checked against the W4 model passes the default verification: {wrong.summary()}")
    return {"onnx_steps": agreement.max_diff_steps, "onnx_agreement": agreement.top1_agreement}


STAGES: dict[str, Callable[[Case], dict[str, Any]]] = {
    "quantize": stage_quantize,
    "calibrate": stage_calibrate,
    "switch": stage_switch,
    "saveload": stage_saveload,
    "train": stage_train,
    "search": stage_search,
    "ptq": stage_ptq,
    "export": stage_export,
}
