"""Language-model deployment: MatMulNBits files at 8/4/2 bits from the one int8 checkpoint vs FP32 ONNX.

For a weight-only joint ``char_llama`` checkpoint (``--checkpoint``; without it a random-init model
calibrated on training windows, said in the results) and a wider ``char_llama`` with random
weights (~100 M parameters, where weight traffic dominates as in real LMs):

* export: the FP32 ONNX file (same network, weights dequantized), the 8-bit ``MatMulNBits`` file
  (``export_onnx``: capture + ``torch.onnx`` + translation), then the 4- and 2-bit files re-written
  from it (``rewrite_nbits``: Double Rounding of the stored int8 codes + packing); seconds for each
  (the model already loaded), and the file sizes;
* verification of each low-bit file against PyTorch on Shakespeare test windows (next-token
  agreement, logits in output steps) at ``accuracy_level`` 4 (int8 compute, the benchmarked files)
  and 0 (float compute);
* decode throughput in onnxruntime, batch 1, 1 and 2 intra-op threads, all files of a model in one
  process, interleaved round by round: each step is one forward over a window of ``W`` tokens
  (the exported graph has no KV cache; the window slides, the next token is the argmax at the last
  position). ``W`` = the context (64): what this graph decodes with; ``W`` = 1: one token per
  forward, the matrix shapes of KV-cache decoding, where reading the weights dominates;
* optionally (``--w8a8``) the W8A8 QDQ file of the same model quantized weights + activations
  (random init, calibrated), to see whether the integer QDQ path pays.

Run: ``nice -n 5 python benchmarks/lm_deploy.py [--checkpoint runs/lm/....safetensors]``. Writes
``benchmarks/results/lm_deploy.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # _common, and this checkout's bitswitch
from _common import md_table, publish  # noqa: E402

import bitswitch  # noqa: E402
from bitswitch.data.text import eval_windows, load_shakespeare  # noqa: E402
from bitswitch.export.nbits import rewrite_nbits  # noqa: E402
from bitswitch.export.onnx import export_onnx, ort_session, verify_onnx  # noqa: E402
from bitswitch.models import build  # noqa: E402
from bitswitch.nn.convert import calibrate, set_precision  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "shakespeare"
BITS = (8, 4, 2)


def weight_only_model(arch: dict, text, wa: bool = False, weight_init: str = "mse") -> torch.nn.Module:
    """A random-init ``char_llama`` quantized jointly at 8/4/2 bits (weight-only unless ``wa``), calibrated."""
    torch.manual_seed(0)
    m = build("char_llama", vocab_size=len(text.vocab), **arch)
    q = bitswitch.quantize(m, BITS, weight_only=() if wa else ["model.layers.*"])
    ctx = arch.get("context", 64)
    calibrate(q, [text.train[: 8 * ctx].reshape(8, ctx)], weight_init=weight_init)
    return q


def write_files(model: torch.nn.Module, context: int, folder: Path, wa_model: torch.nn.Module | None) -> tuple[dict[str, Path], dict[str, float]]:
    """The FP32, 8-bit (exported) and 4/2-bit (re-written) files; seconds to write each."""
    example = torch.zeros(2, context, dtype=torch.long)
    files, seconds = {}, {}
    set_precision(model, 8)
    for label, kw in (("fp32", {"fp32": True}), ("w8", {})):
        files[label] = folder / f"{label}.onnx"
        t0 = time.perf_counter()
        export_onnx(model, files[label], example_inputs=example, dynamic_length=True, **kw)
        seconds[label] = time.perf_counter() - t0
    for b in BITS[1:]:
        set_precision(model, b)
        files[f"w{b}"] = folder / f"w{b}.onnx"
        t0 = time.perf_counter()
        rewrite_nbits(model, files["w8"], files[f"w{b}"])
        seconds[f"w{b}"] = time.perf_counter() - t0
    if wa_model is not None:
        set_precision(wa_model, 8)
        files["w8a8 qdq"] = folder / "w8a8.onnx"
        t0 = time.perf_counter()
        export_onnx(wa_model, files["w8a8 qdq"], example_inputs=example, dynamic_length=True)
        seconds["w8a8 qdq"] = time.perf_counter() - t0
    return files, seconds


def verify(model: torch.nn.Module, files: dict[str, Path], windows: list[torch.Tensor], folder: Path) -> list[dict]:
    rows = []
    for b in BITS:
        set_precision(model, b)
        for level in (4, 0):
            path = files[f"w{b}"]
            if level == 0:
                path = folder / f"w{b}_level0.onnx"
                rewrite_nbits(model, files[f"w{b}"], path, accuracy_level=0)
            res = verify_onnx(model, path, windows, raise_on_failure=False)
            rows.append({"file": f"w{b}", "accuracy_level": level, "next_token_agreement_%": 100 * res.top1_agreement,
                         "max_diff_steps": res.max_diff_steps, "mean_diff_steps": res.mean_diff_steps, "windows": res.images,
                         "distinct_answers": res.distinct_top1})
    return rows


def decode_speed(files: dict[str, Path], prompt: torch.Tensor, windows: tuple[int, ...], steps: dict[int, int], rounds: int) -> list[dict]:
    """Tokens/s of greedy decoding with a sliding window, per file, thread count and window length."""
    rows = []
    for threads in (1, 2):
        sessions = {k: ort_session(p, threads=threads, spinning=False) for k, p in files.items()}
        for w in windows:
            times: dict[str, list[float]] = {k: [] for k in files}

            def decode(sess, n: int) -> None:
                ids = prompt[:, -w:].numpy()
                for _ in range(n):
                    logits = sess.run(None, {"input": ids})[0]
                    ids = np.concatenate([ids[:, 1:], logits[:, -1:].argmax(-1)], axis=1)

            for k, s in sessions.items():
                decode(s, 2)  # warm-up
            for _ in range(rounds):
                for k, s in sessions.items():
                    t0 = time.perf_counter()
                    decode(s, steps[w])
                    times[k].append(steps[w] / (time.perf_counter() - t0))
            fp32 = statistics.median(times["fp32"])
            for k, v in times.items():
                rows.append({"threads": threads, "window": w, "file": k, "tokens_per_s": statistics.median(v), "vs_fp32": statistics.median(v) / fp32,
                             "min": min(v), "max": max(v)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="a weight-only joint char_llama checkpoint, or an FP32 one (then quantized by round to "
                                                       "nearest); default: random init, calibrated")
    ap.add_argument("--wide-dim", type=int, default=1024)
    ap.add_argument("--wide-layers", type=int, default=8)
    ap.add_argument("--wide-hidden", type=int, default=2816)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--verify-windows", type=int, default=256)
    ap.add_argument("--w8a8", action="store_true", help="also the W8A8 QDQ file of a weights+activations model (random init, calibrated)")
    ap.add_argument("--wa-checkpoint", default=None, help="with --w8a8: a trained W+A joint checkpoint for the small model's W8A8 file")
    ap.add_argument("--skip-wide", action="store_true")
    ap.add_argument("--name", default="lm_deploy")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    text = load_shakespeare(DATA)
    data: dict = {"models": {}}
    md = ["# Language-model deployment: MatMulNBits 8/4/2-bit files from one int8 checkpoint vs FP32 ONNX", ""]
    if args.checkpoint:
        from bitswitch.lm import read_lm_info
        from bitswitch.nn.convert import quantized_layers

        small = bitswitch.load(args.checkpoint)
        context = read_lm_info(args.checkpoint).context
        small_label = f"trained weight-only joint checkpoint {args.checkpoint}"
        if not quantized_layers(small):  # an FP32 run: its trained weights on the joint 8/4/2 grid, round to nearest
            small = bitswitch.quantize(small, BITS, weight_only=["model.layers.*"])
            calibrate(small, [text.train[: 8 * context].reshape(8, context)])
            small_label = (f"trained FP32 checkpoint {args.checkpoint}, weight-only quantized at 8/4/2 bits by round to nearest "
                           "(int8 codes, MSE scales, Double Rounding below; no quantization-aware training)")
    else:
        small, context = weight_only_model({}, text), 64
        small_label = "char_llama (0.79 M parameters), RANDOM init (no trained checkpoint was available), calibrated"
    models = [("small", small_label, small, {}, {64: 16, 1: 64})]
    if not args.skip_wide:
        arch = {"dim": args.wide_dim, "layers": args.wide_layers, "heads": args.wide_dim // 64, "hidden": args.wide_hidden}
        t0 = time.perf_counter()
        wide = weight_only_model(arch, text, weight_init="max")
        n = sum(p.numel() for p in wide.parameters())
        print(f"wide model: {n / 1e6:.1f} M parameters, built and calibrated in {time.perf_counter() - t0:.1f} s", flush=True)
        models.append(("wide", f"char_llama dim {args.wide_dim}, {args.wide_layers} layers, SwiGLU {args.wide_hidden} ({n / 1e6:.1f} M parameters), random weights",
                       wide, arch, {64: 3, 1: 16}))
    ids = text.test
    windows = [x for x, _ in eval_windows(ids, context, 64, limit=args.verify_windows * context + 1) if x.shape[1] == context]
    for key, label, model, arch, steps in models:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            wa = None
            if args.w8a8:
                trained_wa = key == "small" and args.wa_checkpoint
                wa = bitswitch.load(args.wa_checkpoint) if trained_wa else weight_only_model(arch, text, wa=True, weight_init="mse" if key == "small" else "max")
                data.setdefault("w8a8_model", {})[key] = args.wa_checkpoint if trained_wa else "random init, calibrated"
            files, seconds = write_files(model, context, folder, wa)
            print(f"{key}: files written {seconds}", flush=True)
            sizes = {k: p.stat().st_size for k, p in files.items()}
            checks = verify(model, files, windows, folder) if key == "small" else []
            if key == "small" and wa is not None:
                res = verify_onnx(wa, files["w8a8 qdq"], windows, raise_on_failure=False)
                checks.append({"file": f"w8a8 qdq ({data['w8a8_model'][key]})", "accuracy_level": "-", "next_token_agreement_%": 100 * res.top1_agreement,
                               "max_diff_steps": res.max_diff_steps, "mean_diff_steps": res.mean_diff_steps, "windows": res.images,
                               "distinct_answers": res.distinct_top1})
            prompt = ids[:64].reshape(1, 64)
            speed = decode_speed(files, prompt, (64, 1), steps, args.rounds)
            print(f"{key}: decode measured", flush=True)
        data["models"][key] = {"label": label, "write_seconds": seconds, "file_bytes": sizes, "verification": checks, "decode": speed}
        md += [f"## {key}: {label}", "",
               "Files (8-bit exported with capture + torch.onnx; 4/2-bit re-written from the 8-bit file by `rewrite_nbits`, "
               "the model already loaded):", "",
               md_table([{"file": k, "bytes": sizes[k], "vs fp32": sizes[k] / sizes["fp32"], "write_s": seconds[k]} for k in files]), ""]
        if checks:
            md += ["Verification against PyTorch on Shakespeare test windows (next-token agreement; logits difference in output steps "
                   "max|y|/127):", "", md_table(checks), ""]
        md += [f"Decode throughput (tokens/s, batch 1, median of {args.rounds} interleaved rounds; window = tokens per forward, "
               "no KV cache):", "", md_table(speed, ["threads", "window", "file", "tokens_per_s", "vs_fp32", "min", "max"]), ""]
    md += ["Notes: `accuracy_level` 4 (the benchmarked files) lets onnxruntime quantize each MatMulNBits input to int8 per block; 0 "
           "computes in float32 (exact maths). The machine is shared by 7 helpers working in parallel on 2 cores "
           "(run with `nice -n 5`): absolute numbers are noisy, the interleaved ratios less so."]
    return publish(args, data, "\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
