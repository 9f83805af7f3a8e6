"""``bitswitch export CKPT --bits 4 --out model.onnx``: QDQ ONNX file, verified in onnxruntime.

With ``--config subnet.json`` the per-layer configuration of that precision file is exported. After
writing the file the command runs it in onnxruntime on real inputs (the checkpoint's dataset, or
``--data``) and compares with the PyTorch model (at most ``--max-steps`` output steps apart, 2 by
default, and ``--min-top1`` top-1 agreement); when they diverge it exits with status 1 and leaves
the file as ``NAME.failed.onnx``, never at the requested path. It compares with the model the file's
integer kernels compute (``--snap-bias``, the default: biases on the file's int32 grid) and, on
labelled data, prints both top-1 accuracies. ``--config`` ships the subnet ``eval --config`` scores,
BatchNorm statistics re-estimated by the file's recipe (:mod:`bitswitch.search.subnet`).
``--compact 4,3,2`` instead re-stores the checkpoint for a device that only needs those bit-widths
(packed low-precision codes, see :mod:`bitswitch.export.compact`).

A language-model checkpoint (one with an ``extra.lm`` record) is exported with token-id inputs of
any length and verified on windows of its context from the Shakespeare test split (``--data``
folder, or ``$BITSWITCH_DATA``): next-character agreement and logits in output steps. Its
weight-only linear layers become ``MatMulNBits`` (onnxruntime's 2/4/8-bit kernels, ``--accuracy-level``);
``--graph FILE`` re-writes only those weights into an earlier export of the same checkpoint, which
takes well under a second instead of the ``torch.onnx`` translation.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from pathlib import Path

from ..export.nbits import ACCURACY_LEVELS, DEFAULT_ACCURACY_LEVEL, INT8_COMPUTE_MAX_STEPS, INT8_COMPUTE_MIN_TOP1
from ..export.onnx_runtime import MAX_STEPS
from ._args import BITS, COUNT, NON_NEGATIVE, float_in, int_in
from ._model import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (QDQ) and verify it in onnxruntime, or re-store it packed",
                       description="Write a QuantizeLinear/DequantizeLinear ONNX file at one precision (uniform or mixed) and check it against PyTorch in onnxruntime. "
                                   "On x86 CPUs without VNNI, run 8-bit files with the onnxruntime session option session.x64quantprecision=1 "
                                   "(the verification does there; the file names it in its metadata): without it their integer kernels can saturate. "
                                   "On CPUs with VNNI leave it off: they are exact without it, and it slows the 8-bit layers down.")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by bitswitch")
    p.add_argument("--out", required=True, help="output file (.onnx, or .safetensors with --compact)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bits", type=BITS, default=None, help="uniform bit-width to export (default: the checkpoint's saved precision)")
    g.add_argument("--config", default=None, help="a per-layer precision JSON file (searched subnet or post-training result)")
    g.add_argument("--compact", default=None, help="comma-separated bit-widths a device keeps, e.g. 4,3,2: write a packed checkpoint instead of ONNX")
    p.add_argument("--others-stay", action="store_true", help="with --config: layers the file does not list keep their precision (default: an error)")
    p.add_argument("--recalibrate-bn", type=NON_NEGATIVE, default=None, metavar="N",
                   help="with --config: re-estimate BatchNorm statistics on N training images, as eval --config does (default: the "
                        "precision file's recipe, 256 images; 0 ships the supernet's statistics). Needs the data (--data or the checkpoint's)")
    p.add_argument("--input-shape", default=None, help="one sample's shape, e.g. 3,32,32 (default: from the checkpoint or the data)")
    p.add_argument("--opset", type=int_in(18), default=21, help="ONNX opset (default 21; int4 containers need 21)")
    p.add_argument("--container", choices=("int8", "int4"), default="int8",
                   help="integer type of <=4-bit grids: int8 (default) keeps them in int8/uint8 with the narrower grid clipped, so "
                        "onnxruntime runs integer kernels (QLinearConv); int4 (opset 21) halves those weights' bytes but onnxruntime "
                        "has no int4 convolution and runs them in float, slower than the FP32 file")
    p.add_argument("--no-int4", action="store_true", help=argparse.SUPPRESS)  # older spelling of --container int8
    p.add_argument("--snap-bias", action=argparse.BooleanOptionalAction, default=True,
                   help="verify against the checkpoint's model with its biases moved onto the file's int32 bias grid (at most half a "
                        "bias step): the model the file's integer kernels compute, since the file cannot hold a finer bias. On by "
                        "default; the file is the same either way. --no-snap-bias compares with the unrounded biases, which at "
                        "<=4-bit activations flips codes near rounding ties (a joint ResNet-20 at W4: 97.4 %% top-1 agreement, "
                        "below the 99.5 %% needed)")
    p.add_argument("--accuracy-level", type=int, choices=ACCURACY_LEVELS, default=DEFAULT_ACCURACY_LEVEL,
                   help="MatMulNBits accuracy_level of weight-only linear layers: 4 (default) lets onnxruntime quantize their inputs to "
                        "int8 per block and compute in integers (fast, not exact); 0 computes in float32 (exact maths, fast only for 4 bits)")
    p.add_argument("--graph", default=None, metavar="FILE.onnx",
                   help="an earlier MatMulNBits export of this checkpoint (any precision): re-write only its weight-only layers at the "
                        "requested precision instead of exporting anew (the rest of the graph does not depend on the bit-width)")
    p.add_argument("--fp32", action="store_true", help="write the unquantized float network (a baseline for latency and size)")
    p.add_argument("--data", default=None, help="dataset folder or name for verification (default: the checkpoint's dataset)")
    p.add_argument("--dataset", default=None, help="dataset name when --data is a folder the checkpoint does not name")
    p.add_argument("--verify-images", type=COUNT, default=1000, help="number of test images to verify on (default 1000)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    p.add_argument("--min-top1", type=float_in(0.0, 1.0), default=None,
                   help=f"required top-1 agreement with PyTorch (default 0.995; {INT8_COMPUTE_MIN_TOP1:g} for MatMulNBits layers at accuracy level 4)")
    p.add_argument("--max-steps", type=float_in(0.0, 1e9), default=None,
                   help=f"largest allowed output difference in output-quantization steps, max|y|/127 (default {MAX_STEPS:g}: a code at "
                        f"a rounding tie; a file at another precision than the model's is 10-20 steps off; {INT8_COMPUTE_MAX_STEPS:g} "
                        "for MatMulNBits layers at accuracy level 4, whose inputs onnxruntime rounds to int8)")
    p.add_argument("--reference", choices=("float32", "float64"), default="float32",
                   help="how PyTorch computes the outputs the file is compared with: float32 (default) or float64 (a near-exact "
                        "copy, so only the file's own rounding counts; for models whose float32 result changes with the summation order)")
    p.add_argument("--layerwise", type=NON_NEGATIVE, nargs="?", const=64, default=0, metavar="N",
                   help="after verifying, compare every quantized layer's input codes in onnxruntime with the model's "
                        "(a float64 copy) on the first N verification images (default 64) and print where they differ: "
                        "a real export fault shows as one layer that differs in bulk, rounding noise as ~1e-5 that grows layer by layer")
    p.add_argument("--json", default=None, help="also write the export and verification report here")
    add_model_args(p)
    p.set_defaults(func=run)


def _verification_inputs(args: argparse.Namespace, extra: dict):
    """``(images, labels, description)`` of real test images when the data can be found; otherwise ``None``s."""
    import torch

    from ._data import labelled_batches, resolve_data

    try:
        name, root = resolve_data(args, extra)
    except ValueError:
        return None, None, None
    loader, _ = labelled_batches(name, root, extra, "test", None, 250)
    xs, ys, n = [], [], 0
    for x, y in loader:
        xs.append(x[: args.verify_images - n])
        ys.append(y[: args.verify_images - n])
        n += xs[-1].shape[0]
        if n >= args.verify_images:
            break
    return torch.cat(xs), torch.cat(ys), f"{name} test ({n} images)"


def _lm_windows(args: argparse.Namespace, extra: dict):
    """``(windows, description)``: up to ``--verify-images`` test-split windows of the model's context
    (token ids), or ``(None, None)`` when the text cannot be found."""
    import torch

    from ..data.errors import DataError
    from ..data.text import eval_windows
    from ..lm import read_lm_info
    from ._data import lm_text

    info = read_lm_info(extra)
    try:
        splits = lm_text(args, info)
    except DataError:
        return None, None
    xs = [x for x, _ in eval_windows(splits.test, info.context, 250, limit=args.verify_images * info.context + 1) if x.shape[1] == info.context]
    x = torch.cat(xs)[: args.verify_images]
    return x, f"shakespeare test ({x.shape[0]} windows of {info.context} characters)"


def run(args: argparse.Namespace) -> int:
    from ..nn.convert import set_precision
    from ._data import subnet_from_args
    from ._model import load_model

    model, meta = load_model(args, args.checkpoint)
    extra = meta.get("extra") or {}
    if args.compact:
        from ..export.compact import save_compact, verify_compact

        try:
            keep = [int(b) for b in args.compact.split(",") if b.strip()]
        except ValueError:
            raise ValueError(f"--compact must be comma-separated integers, e.g. 4,3,2; got {args.compact!r}") from None
        info = save_compact(model, args.out, keep)
        check = verify_compact(model, args.out, keep, input_shape=_shape(args, extra))
        print(json.dumps({**info, "verification": check}, indent=2))
        return 0

    from ..export.onnx import WIDE_CODE_LIMIT, export_onnx, require_onnx
    from ..export.onnx_runtime import EXACT_U8S8_OPTION, cpu_int8_path, require_onnxruntime

    try:
        require_onnx()
        if not args.no_verify:
            require_onnxruntime()
    except ImportError as e:
        raise ValueError(str(e)) from None
    if args.config:  # the very model eval --config scored: its configuration and re-estimated BatchNorms
        print(f"subnet {args.config}: {subnet_from_args(args, model, extra)}")
    elif args.recalibrate_bn is not None:
        raise ValueError("--recalibrate-bn applies to --config subnets only")
    elif args.bits is not None:
        set_precision(model, args.bits)
    lm = "lm" in extra
    labels = None
    if lm:
        from ..lm import read_lm_info

        context = read_lm_info(extra).context
        inputs, source = (None, None) if args.no_verify else _lm_windows(args, extra)
        shape, chunk = [context], 32
    else:
        shape = _shape(args, extra)
        inputs, labels, source = (None, None, None) if args.no_verify else _verification_inputs(args, extra)
        chunk = 250
    if shape is None and inputs is not None:
        shape = list(inputs.shape[1:])
    if shape is None:
        raise ValueError("cannot tell the input shape: pass --input-shape C,H,W")
    if args.graph is not None and (args.fp32 or not lm):
        raise ValueError("--graph re-writes the MatMulNBits weights of a weight-only language model's export; it does not apply "
                         + ("with --fp32" if args.fp32 else "to this checkpoint (not a language model)"))
    # written under NAME.failed.onnx and moved to --out only once verified: a file that disagrees
    # with the model never sits where the user asked for it
    out_path = Path(args.out)
    written = out_path if args.no_verify else out_path.with_name(f"{out_path.stem}.failed{out_path.suffix or '.onnx'}")
    if args.graph is not None:
        from ..export.nbits import rewrite_nbits

        rewritten = rewrite_nbits(model, args.graph, written, accuracy_level=args.accuracy_level)
        kinds = sorted({f"uint{b}" for b in rewritten.values()})
        print(f"wrote {written} ({written.stat().st_size:,} bytes): {len(rewritten)} MatMulNBits layers of {args.graph} re-written ({', '.join(kinds)})")
        out: dict = {"export": {"path": str(written), "graph": args.graph, "file_bytes": written.stat().st_size, "layers": rewritten}}
        return _verify_and_move(args, model, written, out_path, out, inputs, labels, source, shape, lm, chunk, int8_compute=args.accuracy_level == 4)
    example = None
    if lm:
        import torch

        example = torch.zeros(2, shape[0], dtype=torch.long)  # token ids; the file takes any batch and length
    report = export_onnx(model, written, input_shape=None if lm else shape, example_inputs=example, dynamic_length=lm, opset=args.opset,
                         container="int8" if args.no_int4 else args.container, fp32=args.fp32, snap_bias=args.snap_bias,
                         accuracy_level=args.accuracy_level)
    kinds = sorted({f"W{lt.w_bits}A{lt.a_bits if lt.a_bits is not None else 'fp'}:{lt.weight_type}/{lt.act_type or 'float'}" for lt in report.layers if lt.w_bits is not None})
    print(f"wrote {written} ({report.file_bytes:,} bytes, opset {report.opset}); quantized layers: {', '.join(kinds) or 'none'}")
    quantized = [lt for lt in report.layers if lt.w_bits is not None]
    if quantized and not args.fp32:
        kernels = Counter(lt.kernel or "float" for lt in quantized)
        print("onnxruntime kernels of the quantized layers: " + ", ".join(f"{k} x{n}" for k, n in kernels.most_common())
              + (" (float: output feeds a float op such as a residual addition)" if "float" in kernels else ""))
    exact = [lt.name for lt in report.layers if lt.needs_exact_u8s8]
    if exact:
        print(f"{len(exact)} integer layers have 8-bit activations and weight codes beyond +-{WIDE_CODE_LIMIT}: on x86 CPUs without VNNI "
              f"run the file with the onnxruntime session option {EXACT_U8S8_OPTION}=1, or their int16 pair sums saturate (this CPU: "
              f"{cpu_int8_path()}, so the verification below {'does not need it' if cpu_int8_path() == 'vnni' else 'sets it'})")
    if report.unfolded_bn:
        print(f"BatchNorms kept as ops (not directly after a convolution): {len(report.unfolded_bn)} ({', '.join(report.unfolded_bn[:4])}{', ...' if len(report.unfolded_bn) > 4 else ''})")
    int8_compute = args.accuracy_level == 4 and any(lt.kernel == "MatMulNBits" for lt in report.layers)
    return _verify_and_move(args, model, written, out_path, {"export": report.as_dict()}, inputs, labels, source, shape, lm, chunk, int8_compute, report)


def _verify_and_move(args: argparse.Namespace, model, written: Path, out_path: Path, out: dict, inputs, labels, source: str | None,
                     shape: list[int], lm: bool, chunk: int, int8_compute: bool, report=None) -> int:
    """Verify the written file against ``model`` in onnxruntime (unless ``--no-verify``) and move it
    to ``--out`` when it agrees; the command's exit status. ``int8_compute``: the file has
    ``MatMulNBits`` layers at accuracy level 4 (not exact), which sets the looser default tolerances."""
    from ..export.checkpoint import atomic_write_json
    from ..export.onnx_runtime import VerificationError, verify_onnx

    status = 0
    if not args.no_verify:
        import torch

        if args.fp32:
            print("note: --fp32 drops the activation grids, so it is verified only loosely against the quantized model")
        if inputs is None:
            gen = torch.Generator().manual_seed(0)
            if lm:
                print("warning: no Shakespeare text found for verification (pass --data FOLDER); verifying on 64 random token windows", file=sys.stderr)
                inputs, source = torch.randint(0, model.config.vocab_size, (64, *shape), generator=gen), "random tokens (64 windows)"
            else:
                print("warning: no dataset found for verification (pass --data); verifying on 256 random normal inputs", file=sys.stderr)
                inputs, source = torch.randn(256, *shape, generator=gen), "random normal (256)"
        try:
            min_top1 = args.min_top1 if args.min_top1 is not None else INT8_COMPUTE_MIN_TOP1 if int8_compute else 0.995
            max_steps = args.max_steps if args.max_steps is not None else INT8_COMPUTE_MAX_STEPS if int8_compute else MAX_STEPS
            batches = inputs.split(chunk) if labels is None else list(zip(inputs.split(chunk), labels.split(chunk)))
            res = verify_onnx(model, written, batches, min_top1=min_top1 if not args.fp32 else 0.0,
                              max_steps=max_steps if not args.fp32 else float("inf"), reference=args.reference)
            print(f"verification on {source}: {res.summary()}")
            out["verification"] = res.as_dict()
        except VerificationError as e:
            hint = "" if args.snap_bias or args.fp32 or lm else " (integer kernels round each bias to int32; --snap-bias, the default, verifies against that)"
            print(f"bitswitch export: verification on {source}: {e}{hint}", file=sys.stderr)
            if not args.layerwise and report is not None:
                print("bitswitch export: --layerwise shows which layer's codes differ first", file=sys.stderr)
            print(f"bitswitch export: the file is kept as {written} for inspection; nothing was written to {out_path}", file=sys.stderr)
            out["verification_error"] = str(e)
            status = 1
        if args.layerwise and not args.fp32 and report is not None:
            from ..export.layerwise import compare_layer_codes, format_layer_codes

            rows = compare_layer_codes(model, written, report, inputs[: args.layerwise].split(16))
            print(f"input codes of each quantized layer, onnxruntime vs float64 PyTorch, on {min(args.layerwise, len(inputs))} images:")
            print(format_layer_codes(rows))
            out["layerwise"] = [r.as_dict() for r in rows]
    if status == 0 and written != out_path:
        written.replace(out_path)
        print(f"verified: moved to {out_path}")
        out["export"]["path"] = str(out_path)
    if args.json:
        atomic_write_json(args.json, out)
    return status


def _shape(args: argparse.Namespace, extra: dict) -> list[int] | None:
    from ..export.schema import input_shape

    if args.input_shape is not None:
        return input_shape(args.input_shape, "--input-shape")
    return input_shape(extra["input_shape"], "the checkpoint's extra.input_shape") if "input_shape" in extra else None
