"""One training loop for every trainer: FP32, fixed-precision QAT and joint multi-precision QAT.

A run (:func:`train`) is driven entirely by a :class:`~bitswitch.train.config.TrainConfig`:

1. validate the config, load the data (train split minus a held-out validation split, and the test
   split) and build the model — every error of input happens here, before the first step;
2. FP32 mode trains the float model; QAT modes convert it with :func:`bitswitch.quantize`
   (optionally from FP32 weights, ``init_from``) and calibrate the scales on a few training batches;
3. every iteration visits the bit-widths highest first: forward, loss (cross-entropy, optionally
   distilled from the top bit or from the neighbour above), backward, and an optimizer step per
   bit-width with the ALRS rate of the shared scales (or one step on the summed loss);
4. after every epoch each bit-width is evaluated on the validation split in eval mode (its own
   BatchNorm), the last and best integer checkpoints and the resumable state are written
   atomically, and a metrics line is appended;
5. at the end the best checkpoint is reloaded *from its integer file* and evaluated once on the
   test split; a plot and a summary are written.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..export.checkpoint import atomic_write_bytes, atomic_write_json, load, save
from ..nn.convert import calibrate, quantize, set_precision
from . import ddp
from .config import TrainConfig
from .optim import alrs_factors, build_optimizer, describe_groups, schedule_factor, set_lr
from .fit import check_model_fits_data
from .lock import RunLock
from .state import StateError, read_state, restore_state, save_state

log = logging.getLogger("bitswitch.train")

FP32_FORMAT = "bitswitch-fp32"
STATE_FILE = "state.safetensors"
METRICS_FILE = "metrics.jsonl"


# ---------------------------------------------------------------------------------------------- data
@dataclass
class Data:
    train: Any
    val: Any
    test: Any
    key: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def load_data(cfg: TrainConfig) -> Data:
    """Train/validation split carved from the training data (seeded, stratified) and the test split."""
    from ..data import canonical_name, dataset_stats, load_dataset

    key = canonical_name(cfg.dataset)
    full = load_dataset(cfg.dataset, cfg.data_root, "train")
    test = load_dataset(cfg.dataset, cfg.data_root, "test")
    if cfg.train_subset and cfg.train_subset < len(full):
        gen = torch.Generator().manual_seed(cfg.split_seed)
        full = full.subset(torch.randperm(len(full), generator=gen)[: cfg.train_subset].sort().values)
    if cfg.test_subset and cfg.test_subset < len(test):
        test = test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(cfg.split_seed))[: cfg.test_subset].sort().values)
    train, val = full.split(cfg.val_fraction, seed=cfg.split_seed)
    stats = dataset_stats(key) or {"mean": (0.5,), "std": (0.25,)}
    return Data(train, val, test, key, tuple(stats["mean"]), tuple(stats["std"]))


def make_loader(data: Data, split: str, cfg: TrainConfig, device: str, *, train: bool = False):
    from ..data import TensorLoader

    ds = getattr(data, split)
    if train:
        drop = len(ds) > cfg.batch_size
        return TensorLoader(ds, cfg.batch_size, shuffle=True, augment=cfg.augment, drop_last=drop, seed=cfg.seed,
                            mean=data.mean, std=data.std, device=device, flip=data.key == "cifar10")
    return TensorLoader(ds, cfg.eval_batch_size, shuffle=False, mean=data.mean, std=data.std, device=device)


# --------------------------------------------------------------------------------------------- model
def build_float_model(cfg: TrainConfig, data: Data) -> nn.Module:
    """The FP32 architecture; ``num_classes``/``in_channels``/``in_features`` come from the data."""
    from ..models import accepted_kwargs, build

    accepted = accepted_kwargs(cfg.model)  # raises with the list of available models
    c, h, w = data.input_shape
    auto = {"num_classes": data.num_classes, "in_channels": c, "in_features": c * h * w}
    kwargs = {k: v for k, v in auto.items() if accepted is None and k != "in_features" or accepted is not None and k in accepted}
    kwargs.update(cfg.model_kwargs)
    return build(cfg.model, **kwargs)


def save_fp32(model: nn.Module, path: str | Path, extra: dict[str, Any]) -> Path:
    """FP32 weights as safetensors with the architecture and run info in the metadata."""
    tensors = {k: v.detach().contiguous().clone().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FP32_FORMAT, "arch": json.dumps(getattr(model, "bitswitch_arch", None)), "extra": json.dumps(extra)}
    path = Path(path)
    atomic_write_bytes(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def load_fp32_weights(model: nn.Module, source: str | Path) -> Path:
    """Load FP32 weights (a fp32 run directory or its ``best.safetensors``) strictly into ``model``."""
    path = Path(source)
    if path.is_dir():
        path = path / "best.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no FP32 weights at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"init_from: {path} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    if meta.get("format") != FP32_FORMAT:
        raise ValueError(f"init_from: {path} is not an FP32 checkpoint written by an fp32 run (format={meta.get('format')!r})")
    arch = json.loads(meta.get("arch", "null"))
    mine = getattr(model, "bitswitch_arch", None)
    if arch and mine and arch != mine:
        raise ValueError(f"init_from: {path} holds {arch}, but this run builds {mine}")
    expected = model.state_dict()
    bad = sorted(set(expected) ^ set(tensors)) + sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if bad:
        raise ValueError(f"init_from: {path} does not fit the model (mismatched keys/shapes: {bad[:5]})")
    model.load_state_dict(tensors, strict=True)
    return path


def quantize_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    fp: Any = "first_last" if cfg.full_precision == ["first_last"] else list(cfg.full_precision)
    return quantize(model, cfg.bits, storage_bits=cfg.storage_bits, full_precision=fp, rounding=cfg.rounding,
                    variant=cfg.variant, switchable_bn=cfg.switchable_bn)


# ------------------------------------------------------------------------------------ step and eval
def bit_labels(cfg: TrainConfig) -> list[str]:
    return ["fp32"] if cfg.mode == "fp32" else [f"w{b}a{b}" for b in cfg.bits]


def _loss(logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None, cfg: TrainConfig) -> torch.Tensor:
    ce = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    if teacher is None:
        return ce
    t = cfg.distill_temperature
    kl = F.kl_div(F.log_softmax(logits / t, dim=1), teacher, reduction="batchmean") * (t * t)
    return (1.0 - cfg.distill_weight) * ce + cfg.distill_weight * kl


def _post_backward(model: nn.Module, cfg: TrainConfig, info: ddp.DistInfo) -> None:
    ddp.average_gradients(model, info)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
               sched: float, info: ddp.DistInfo, timer: dict[str, float], plan: list | None = None) -> dict[str, float]:
    """One iteration over every bit-width (or one FP32 step); returns the loss per bit label."""
    if cfg.mode == "fp32":
        t0 = time.perf_counter()
        set_lr(optimizer, cfg.lr, sched)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        loss.backward()
        _post_backward(model, cfg, info)
        optimizer.step()
        timer["fp32"] = timer.get("fp32", 0.0) + time.perf_counter() - t0
        return {"fp32": float(loss.detach())}

    eta = alrs_factors(cfg.bits, cfg.alrs)
    losses: dict[str, float] = {}
    teacher: torch.Tensor | None = None
    shared = [g for g in optimizer.param_groups if g["name"] == "scale_shared"]
    shared_params = [p for g in shared for p in g["params"]]
    if cfg.loss_mode == "summed":
        optimizer.zero_grad(set_to_none=True)
    for i, b in enumerate(cfg.bits):
        t0 = time.perf_counter()
        set_precision(model, plan[i] if plan is not None else b)  # hasb: this bit's mixed configuration
        if cfg.loss_mode == "per_bit":
            # set_to_none: other bits' activation scales and BatchNorms get no gradient, so Adam
            # leaves them alone in this bit's step instead of decaying their moments.
            optimizer.zero_grad(set_to_none=True)
            before = None
        else:
            before = [None if p.grad is None else p.grad.clone() for p in shared_params]
        logits = model(x)
        loss = _loss(logits, y, teacher if i > 0 else None, cfg)
        loss.backward()
        if cfg.loss_mode == "per_bit":
            _post_backward(model, cfg, info)
            set_lr(optimizer, cfg.lr, sched, shared_eta=eta[b])
            optimizer.step()
        else:  # ALRS for the summed loss: scale this bit's contribution to the shared scales' gradient
            with torch.no_grad():
                for p, g0 in zip(shared_params, before):
                    if p.grad is not None and eta[b] != 1.0:
                        if g0 is None:
                            p.grad.mul_(eta[b])
                        else:
                            p.grad.sub_(g0).mul_(eta[b]).add_(g0)
        if cfg.distill == "neighbour" or (cfg.distill == "inplace" and i == 0):
            teacher = F.softmax(logits.detach() / cfg.distill_temperature, dim=1)
        losses[f"w{b}a{b}"] = float(loss.detach())
        timer[f"w{b}a{b}"] = timer.get(f"w{b}a{b}", 0.0) + time.perf_counter() - t0
    if cfg.loss_mode == "summed":
        t0 = time.perf_counter()
        _post_backward(model, cfg, info)
        set_lr(optimizer, cfg.lr, sched)
        optimizer.step()
        timer["step"] = timer.get("step", 0.0) + time.perf_counter() - t0
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, loader, bits: list[int] | None) -> dict[str, float]:
    """Top-1 accuracy (%) at every bit-width (``None``: the FP32 model), in eval mode."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for b in bits if bits is not None else [None]:
            if b is not None:
                set_precision(model, b)
            correct = total = 0
            loader.set_epoch(0)
            for x, y in loader:
                correct += int((model(x).argmax(1) == y).sum())
                total += int(y.numel())
            out["fp32" if b is None else f"w{b}a{b}"] = 100.0 * correct / max(total, 1)
    finally:
        if bits:
            set_precision(model, bits[0])
        model.train(was_training)
    return out


def select_metric(acc: dict[str, float], how: str) -> float:
    vals = list(acc.values())
    return min(vals) if how == "min" else sum(vals) / len(vals)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table (right-aligned numbers), used for per-epoch and summary tables."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"
    return str(v)


def plot_history(history: list[dict[str, Any]], labels: list[str], path: Path, title: str) -> Path | None:
    """Validation accuracy per bit-width over epochs (matplotlib, Agg backend)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    for lab in labels:
        ax.plot(epochs, [h["val_acc"][lab] for h in history], marker="o", label=lab.upper())
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- run
@dataclass
class RunResult:
    out_dir: Path
    config: TrainConfig
    history: list[dict[str, Any]]
    best_val: dict[str, float]
    test_acc: dict[str, float]
    model: nn.Module
    summary: dict[str, Any] = field(default_factory=dict)


class _Progress:
    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, losses: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def prepare(cfg: TrainConfig, *, resume: bool = False, device: str | None = None):
    """Everything before the first step (data, model, calibration, optimizer, resume checks)."""
    out = Path(cfg.out_dir)
    state_path = out / STATE_FILE
    stored: dict[str, Any] | None = None
    if resume:
        tensors, stored = read_state(state_path)
        try:
            old = TrainConfig.from_dict(stored["config"], where=f"{state_path} (stored config)")
        except ValueError as e:
            raise StateError(f"cannot resume: {e}") from None
        diff = old.diff(cfg)
        if diff:
            lines = ", ".join(f"{k}: {a!r} (run) vs {b!r} (now)" for k, b, a in ((k, v[1], v[0]) for k, v in diff.items()))
            raise StateError(f"cannot resume {out}: the run was started with another config; differing keys: {lines}")
    elif state_path.exists():
        raise ValueError(f"{out} already holds a run ({STATE_FILE}); pass --resume to continue it or choose another out_dir")

    data = load_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_float_model(cfg, data)
    if cfg.mode == "hasb":
        from .hasb import latent_from_checkpoint

        # a joint run's checkpoint: quantized and calibrated (on resume the state file overwrites it)
        model = latent_from_checkpoint(cfg.init_from)
    elif cfg.init_from and not resume:  # a resumed run takes every weight from its state file
        load_fp32_weights(model, cfg.init_from)
    check_model_fits_data(model, data.input_shape, data.num_classes, f"model {cfg.model!r} with model_kwargs {cfg.model_kwargs} on dataset {data.key!r}")
    device = device or cfg.device
    calib_loader = make_loader(data, "train", cfg, "cpu")
    calib_loader.shuffle, calib_loader.augment = False, False
    if cfg.mode not in ("fp32", "hasb"):
        model = quantize_model(model, cfg)
        if not resume:  # a resumed run gets its scales from the state file
            calibrate(model, calib_loader, num_batches=cfg.calib_batches, weight_init=cfg.weight_init, act_init=cfg.act_init, seed=cfg.seed)
        set_precision(model, cfg.bits[0])
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    info: dict[str, Any] = {"epoch": 0, "step": 0, "best": None, "best_epoch": None, "history": []}
    if resume:
        info = restore_state(tensors, stored, model, optimizer)  # type: ignore[arg-type]
    return data, model, optimizer, info


def train(cfg: TrainConfig, *, resume: bool = False, stop_after: int | None = None) -> RunResult:
    """Run (or resume) a training run; ``stop_after`` ends after that many epochs (simulates an interruption)."""
    cfg.validate()
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.compile_kernels and cfg.mode != "fp32":
        from ..quant.functional import use_compiled_kernels

        use_compiled_kernels(True)
    info_d, device = ddp.setup(cfg.device)
    out = Path(cfg.out_dir)
    handler: logging.Handler | None = None
    lock: RunLock | None = None
    try:
        lock = RunLock(out) if info_d.master else None  # before anything reads or writes the folder
        data, model, optimizer, info = prepare(cfg, resume=resume, device=device)
        if info_d.master:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out / "config.yaml", lambda tmp: Path(tmp).write_text(cfg.to_yaml()))
            handler = logging.FileHandler(out / "train.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
            log.addHandler(handler)
            if log.level == logging.NOTSET and logging.getLogger().level > logging.INFO:
                log.setLevel(logging.INFO)
        return _run(cfg, data, model, optimizer, info, info_d, device, resume, stop_after)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        torch.set_num_threads(threads)
        ddp.teardown(info_d)
        if lock is not None:
            lock.release()


def _checkpoint_extra(cfg: TrainConfig, data: Data, epoch: int, val: dict[str, float]) -> dict[str, Any]:
    return {"train_config": cfg.to_dict(), "config_version": cfg.version, "epoch": epoch, "val_acc": val,
            "dataset": data.key, "input_shape": list(data.input_shape), "mean": list(data.mean), "std": list(data.std)}


def _write_checkpoint(model: nn.Module, path: Path, cfg: TrainConfig, extra: dict[str, Any]) -> None:
    if cfg.mode == "fp32":
        save_fp32(model, path, extra)
    else:
        save(model, path, extra=extra)


def _run(cfg, data, model, optimizer, info, dist_info: ddp.DistInfo, device, resume, stop_after) -> RunResult:
    out = Path(cfg.out_dir)
    master = dist_info.master
    train_loader = make_loader(data, "train", cfg, device, train=True)
    val_loader = make_loader(data, "val", cfg, device)
    steps_per_epoch = len(train_loader)
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    labels = bit_labels(cfg)
    bits = None if cfg.mode == "fp32" else list(cfg.bits)
    hasb = None
    if cfg.mode == "hasb":
        from ..nn.convert import quantized_layers
        from ..search.hessian import load_traces, sensitivity
        from .hasb import RouletteSampler, SwitchSchedule

        sampler = RouletteSampler(sensitivity(load_traces(cfg.hessian)), cfg.bits, layers=list(quantized_layers(model)))
        schedule = SwitchSchedule(int(cfg.hasb_warmup_epochs * steps_per_epoch), max(1, int(cfg.hasb_ramp_epochs * steps_per_epoch)), cfg.hasb_p_max)
        hasb = (sampler, schedule)
    history: list[dict[str, Any]] = list(info["history"])
    if master:
        log.info("%s run %s: %s, %d train / %d val / %d test images, %d steps/epoch%s", cfg.mode, out, cfg.model,
                 len(data.train), len(data.val), len(data.test), steps_per_epoch,
                 f", {dist_info.world_size} processes" if dist_info.enabled else "")
        log.info("optimizer groups: %s", describe_groups(optimizer))
        if resume:
            log.info("resuming after epoch %d (step %d)", info["epoch"], info["step"])
        # metrics.jsonl always matches the state: rewrite it from the stored history
        text = "".join(json.dumps(h) + "\n" for h in history)
        atomic_write_bytes(out / METRICS_FILE, lambda tmp: Path(tmp).write_text(text))
    show = cfg.progress and master and sys.stderr.isatty()
    step = int(info["step"])
    done_now = 0
    for epoch in range(int(info["epoch"]), cfg.epochs):
        if stop_after is not None and done_now >= stop_after:
            break
        model.train()
        train_loader.set_epoch(epoch)
        timer: dict[str, float] = {}
        sums: dict[str, float] = {}
        t_epoch = time.perf_counter()
        bar = _Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", show)
        n = 0
        for x, y in ddp.shard_batches(train_loader, dist_info):
            sched = schedule_factor(step, total, warmup, cfg.min_lr_ratio)
            plan = None
            if hasb is not None:  # drawn from (seed, step) only: identical on every rank and on resume
                from .hasb import supernet_plan

                plan = supernet_plan(hasb[0], hasb[1], step, cfg.bits, seed=cfg.seed)
            losses = train_step(model, optimizer, x, y, cfg, sched, dist_info, timer, plan)
            for k, v in losses.items():
                if not math.isfinite(v):
                    raise FloatingPointError(f"loss became {v} at step {step} ({k}); lower the learning rate")
                sums[k] = sums.get(k, 0.0) + v
            step += 1
            n += 1
            bar.update(losses)
            if master and cfg.log_every and step % cfg.log_every == 0:
                log.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
        bar.close()
        train_time = time.perf_counter() - t_epoch
        ddp.average_buffers(model, dist_info)
        val = evaluate(model, val_loader, bits)
        metric = select_metric(val, cfg.best_metric)
        improved = info["best"] is None or metric > info["best"]
        if improved:
            info["best"], info["best_epoch"] = metric, epoch + 1
        record = {
            "epoch": epoch + 1, "step": step, "lr": cfg.lr * schedule_factor(max(step - 1, 0), total, warmup, cfg.min_lr_ratio),
            "train_loss": {k: v / max(n, 1) for k, v in sums.items()}, "val_acc": val, "val_metric": metric,
            "best": improved, "train_time_s": train_time, "bit_time_s": timer,
        }
        history.append(record)
        info.update(epoch=epoch + 1, step=step, history=history)
        if master:
            extra = _checkpoint_extra(cfg, data, epoch + 1, val)
            _write_checkpoint(model, out / "last.safetensors", cfg, extra)
            if improved:
                _write_checkpoint(model, out / "best.safetensors", cfg, extra)
            with open(out / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            save_state(out / STATE_FILE, model, optimizer, info, cfg.to_json())
            row = {"epoch": f"{epoch + 1}/{cfg.epochs}", **{k.upper(): v for k, v in val.items()},
                   "loss": sum(record["train_loss"].values()) / max(len(record["train_loss"]), 1), "time s": train_time,
                   "best": "*" if improved else ""}
            log.info("validation accuracy (%%):\n%s", format_table([row], list(row)))
        ddp.barrier(dist_info)
        done_now += 1

    finished = int(info["epoch"]) >= cfg.epochs
    best_val = next((h["val_acc"] for h in history if h["epoch"] == info["best_epoch"]), {})
    test_acc: dict[str, float] = {}
    summary: dict[str, Any] = {}
    if finished and master and (out / "best.safetensors").exists():
        test_acc = evaluate_checkpoint(out / "best.safetensors", data, cfg, device)
        summary = {
            "mode": cfg.mode, "bits": None if cfg.mode == "fp32" else list(cfg.bits), "model": cfg.model, "dataset": data.key,
            "epochs": cfg.epochs, "best_epoch": info["best_epoch"], "best_val_acc": best_val, "test_acc": test_acc,
            "mean_epoch_time_s": sum(h["train_time_s"] for h in history) / max(len(history), 1),
            "train_images": len(data.train), "val_images": len(data.val), "test_images": len(data.test),
        }
        atomic_write_json(out / "summary.json", summary)
        plot_history(history, labels, out / "accuracy.png", f"{cfg.model} {cfg.mode} {'' if bits is None else bits}")
        rows = [{"precision": lab.upper(), "best val": best_val.get(lab, float("nan")), "test": test_acc.get(lab, float("nan"))} for lab in labels]
        log.info("summary (best epoch %s of %d, chosen on validation):\n%s", info["best_epoch"], cfg.epochs, format_table(rows, list(rows[0])))
    return RunResult(out, cfg, history, best_val, test_acc, model, summary)


def evaluate_checkpoint(path: Path, data: Data, cfg: TrainConfig, device: str, split: str = "test") -> dict[str, float]:
    """Accuracy of a saved checkpoint, reloaded from its file (integer form for QAT runs)."""
    loader = make_loader(data, split, cfg, device)
    if cfg.mode == "fp32":
        model = build_float_model(cfg, data)
        load_fp32_weights(model, path)
        return evaluate(model.to(device), loader, None)
    model = load(path).to(device)
    return evaluate(model, loader, list(cfg.bits))


__all__ = ["train", "prepare", "train_step", "evaluate", "evaluate_checkpoint", "load_data", "build_float_model",
           "save_fp32", "load_fp32_weights", "RunResult", "format_table", "plot_history", "select_metric"]
