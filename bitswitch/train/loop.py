"""One training loop for every trainer: FP32, fixed-precision QAT, joint multi-precision QAT and HASB.

A run (:func:`train`) is driven entirely by a :class:`~bitswitch.train.config.TrainConfig`:

1. :func:`setup_run` validates the resume request, loads the data (:mod:`.data`: train split minus a
   held-out validation split, and the test split) and builds the model (:mod:`.model`: FP32, or
   converted with :func:`bitswitch.quantize` and calibrated) — every error of input happens here,
   before the first step;
2. every iteration is one :func:`~.step.train_step` (the bit-widths highest first, with ALRS and
   optional distillation);
3. after every epoch each bit-width is evaluated on the validation split in eval mode (its own
   BatchNorm), the last and best checkpoints (:func:`bitswitch.save`: integer codes for QAT runs,
   the float state dict for FP32 runs) and the resumable state are written atomically, and a
   metrics line is appended;
4. at the end the best checkpoint is reloaded *from its file* and evaluated once on the test split;
   a plot and a summary are written (:mod:`.report`).

Ctrl-C (:mod:`.interrupt`) ends the current step; the state is saved at that step, with the
epoch's tally (:class:`EpochTally`), and a resumed run skips the batches of that epoch already done
(the loader's order depends on ``(seed, epoch)`` only), so it ends with the same weights.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import TensorLoader
from ..export.checkpoint import atomic_write_bytes, save
from ..models.factory import is_factory
from ..nn.convert import calibrate, quantized_layers, set_precision
from ..progress import Progress
from . import ddp
from .config import TrainConfig
from .data import Data, TextData, load_data
from .hasb import RouletteSampler, SwitchSchedule, latent_from_checkpoint, supernet_plan
from .interrupt import StopRequest, TrainingInterrupted, resume_command
from .lock import RunLock
from .model import build_float_model, load_fp32_weights, quantize_model
from .optim import build_optimizer, describe_groups, schedule_factor
from .report import epoch_table, summarize, summary_table, write_report
from .state import StateError, read_state, restore_state, save_state
from .step import bit_labels, train_step
from .task import evaluate_checkpoint, task_of

log = logging.getLogger("bitswitch.train")

STATE_FILE = "state.safetensors"
METRICS_FILE = "metrics.jsonl"


@dataclass
class RunResult:
    """What :func:`train` returns: the run's history, its test metric (accuracy for image runs, loss in
    nats/char for language models) and the trained model (in memory)."""

    out_dir: Path
    config: TrainConfig
    history: list[dict[str, Any]]
    best_val: dict[str, float]
    test_acc: dict[str, float]
    model: nn.Module
    summary: dict[str, Any] = field(default_factory=dict)
    test_loss: dict[str, float] = field(default_factory=dict)


def train(cfg: TrainConfig, *, resume: bool = False, stop_after: int | None = None) -> RunResult:
    """Run (or resume) a training run; ``stop_after`` ends after that many epochs (simulates an interruption)."""
    cfg.validate()
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.compile_kernels and cfg.mode != "fp32":
        from ..quant.functional import use_compiled_kernels

        use_compiled_kernels(True)
    dist, device = ddp.setup(cfg.device)
    out = Path(cfg.out_dir)
    handler: logging.Handler | None = None
    lock: RunLock | None = None
    try:
        lock = RunLock(out) if dist.master else None  # before anything reads or writes the folder
        data, model, optimizer, info = setup_run(cfg, resume=resume, device=device)
        if dist.master:  # the lock created the folder
            atomic_write_bytes(out / "config.yaml", lambda tmp: Path(tmp).write_text(cfg.to_yaml()))
            handler = logging.FileHandler(out / "train.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
            log.addHandler(handler)
            if log.level == logging.NOTSET and logging.getLogger().level > logging.INFO:
                log.setLevel(logging.INFO)
        with StopRequest(enabled=not dist.enabled) as stop:
            return run_epochs(cfg, data, model, optimizer, info, dist, device, resume, stop_after, stop)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        torch.set_num_threads(threads)
        ddp.teardown(dist)
        if lock is not None:
            lock.release()


def setup_run(cfg: TrainConfig, *, resume: bool = False, device: str | None = None) -> tuple[Data | TextData, nn.Module, torch.optim.Optimizer, dict[str, Any]]:
    """Everything before the first step: resume checks, data, model, calibration, optimizer, restored state."""
    state = read_resumable_state(cfg) if resume else None
    if not resume and (Path(cfg.out_dir) / STATE_FILE).exists():
        raise ValueError(f"{cfg.out_dir} already holds a run ({STATE_FILE}); continue it with `{resume_command(cfg.out_dir)}` or choose another out_dir")
    data = load_data(cfg)
    model = build_run_model(cfg, data, resume=resume)
    model.to(device or cfg.device)
    if cfg.channels_last:  # before the optimizer: its state tensors take the parameters' layout
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    info: dict[str, Any] = {"epoch": 0, "step": 0, "best": None, "best_epoch": None, "history": []}
    if state is not None:
        info = restore_state(*state, model, optimizer)
    return data, model, optimizer, info


def read_resumable_state(cfg: TrainConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state file of the run in ``cfg.out_dir``, refused unless it was started with this same config."""
    state_path = Path(cfg.out_dir) / STATE_FILE
    tensors, stored = read_state(state_path)
    try:
        old = TrainConfig.from_dict(stored["config"], where=f"{state_path} (stored config)")
    except ValueError as e:
        raise StateError(f"cannot resume: {e}") from None
    diff = old.diff(cfg)
    if diff:
        lines = ", ".join(f"{k}: {then!r} (run) vs {now!r} (now)" for k, (then, now) in diff.items())
        raise StateError(f"cannot resume {cfg.out_dir}: the run was started with another config; differing keys: {lines}. "
                         f"To continue it as it was started: {resume_command(cfg.out_dir)}")
    return tensors, stored


def build_run_model(cfg: TrainConfig, data: Data | TextData, *, resume: bool) -> nn.Module:
    """The model before its first step: FP32 (optionally from ``init_from``), or quantized and calibrated.

    A resumed run takes every weight and scale from its state file, so nothing is loaded or
    calibrated here; HASB continues a joint run's checkpoint as a trainable model.
    """
    torch.manual_seed(cfg.seed)
    model = build_float_model(cfg, data)  # for hasb too: it checks the model fits the data, and seeded runs depend on its draws
    task_of(cfg).check_fits(model, data, cfg)
    if cfg.mode == "hasb":
        return latent_from_checkpoint(cfg.init_from, model if is_factory(cfg.model) else None)
    if cfg.init_from and not resume:
        load_fp32_weights(model, cfg.init_from)
    if cfg.mode == "fp32":
        return model
    model = quantize_model(model, cfg)
    if not resume:
        calibrate(model, task_of(cfg).calibration_batches(data, cfg), num_batches=cfg.calib_batches, weight_init=cfg.weight_init, act_init=cfg.act_init, seed=cfg.seed)
    set_precision(model, cfg.bits[0])
    return model


def checkpoint_extra(cfg: TrainConfig, data: Data | TextData, epoch: int, val: dict[str, float]) -> dict[str, Any]:
    """What a checkpoint records about its run (``bitswitch eval`` finds the data and normalisation, or the vocabulary, here)."""
    task = task_of(cfg)
    return {"train_config": cfg.to_dict(), "config_version": cfg.version, "epoch": epoch, task.metric.val_key: val,
            **task.checkpoint_record(data, cfg)}


def run_epochs(cfg: TrainConfig, data: Data | TextData, model: nn.Module, optimizer: torch.optim.Optimizer, info: dict[str, Any],
               dist: ddp.DistInfo, device: str, resume: bool, stop_after: int | None, stop: StopRequest | None = None) -> RunResult:
    """The epochs left to train (up to ``stop_after`` of them, or until ``stop`` is requested), then the
    test evaluation of a finished run."""
    stop = stop or StopRequest(enabled=False)
    out = Path(cfg.out_dir)
    task = task_of(cfg)
    train_loader = task.train_batches(data, cfg, device)
    steps_per_epoch = len(train_loader)
    total, warmup = cfg.epochs * steps_per_epoch, int(round(cfg.warmup_epochs * steps_per_epoch))

    def lr_factor(step: int) -> float:
        return schedule_factor(step, total, warmup, cfg.min_lr_ratio)

    plan_at = hasb_planner(cfg, model, steps_per_epoch)
    # the steps run the compiled wrapper; evaluation, checkpoints and state use the model itself (same parameters)
    if cfg.compile:
        # dynamo's recompilation limit (8) counts the graphs of earlier runs in this process, whose
        # models are gone: without a reset, the third joint run of a benchmark trains eagerly
        torch._dynamo.reset()
    step_model = torch.compile(model) if cfg.compile else model  # one graph per bit-width
    history: list[dict[str, Any]] = list(info["history"])
    if dist.master:
        log.info("%s run %s: %s, %d train / %d val / %d test %s, %d steps/epoch%s", cfg.mode, out, cfg.model,
                 len(data.train), len(data.val), len(data.test), task.unit, steps_per_epoch,
                 f", {dist.world_size} processes" if dist.enabled else "")
        log.info("optimizer groups: %s", describe_groups(optimizer))
        if cfg.bit_lr_mult:
            log.info("each bit-width's step at lr x %s", ", ".join(f"{m:g} (w{b})" for b, m in zip(cfg.bits, cfg.bit_lr_mult)))
        if cfg.optimizer_state == "per_bit":
            log.info("each bit-width's step keeps its own %s state (%d copies)", cfg.optimizer, len(cfg.bits))
        if resume:
            partial = info.get("partial") or {}
            log.info("resuming at step %d (epoch %d, after batch %d of %d)", info["step"], info["epoch"] + 1, partial.get("batches", 0), steps_per_epoch)
        # metrics.jsonl always matches the state: rewrite it from the stored history
        text = "".join(json.dumps(h) + "\n" for h in history)
        atomic_write_bytes(out / METRICS_FILE, lambda tmp: Path(tmp).write_text(text))
    show = cfg.progress and dist.master and sys.stderr.isatty()
    step = int(info["step"])
    last = cfg.epochs if stop_after is None else min(cfg.epochs, int(info["epoch"]) + stop_after)
    tally = EpochTally.resumed(info.pop("partial", None), steps_per_epoch, out / STATE_FILE)
    for epoch in range(int(info["epoch"]), last):
        model.train()
        train_loader.set_epoch(epoch)
        t_epoch = time.perf_counter()
        bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", show, initial=tally.batches)
        step = train_epoch(step_model, optimizer, train_loader, cfg, dist, step, lr_factor, plan_at, bar, tally, stop)
        bar.close()
        tally.train_time_s += time.perf_counter() - t_epoch
        if tally.batches < steps_per_epoch:  # stopped by Ctrl-C between two steps
            info.update(step=step, partial=tally.as_dict())
            save_state(out / STATE_FILE, model, optimizer, info, cfg.to_json())
            raise TrainingInterrupted(out, out / STATE_FILE, step, epoch, tally.batches, steps_per_epoch)
        ddp.average_buffers(model, dist)
        val = task.evaluate(model, data, "val", cfg, device)
        metric = task.metric.select(val, cfg.best_metric)
        improved = info["best"] is None or task.metric.better(metric, info["best"])
        if improved:
            info["best"], info["best_epoch"] = metric, epoch + 1
        record = {
            "epoch": epoch + 1, "step": step, "lr": cfg.lr * lr_factor(max(step - 1, 0)),
            "train_loss": tally.mean_losses(), task.metric.val_key: val, "val_metric": metric,
            "best": improved, "train_time_s": tally.train_time_s, "bit_time_s": tally.bit_time_s,
        }
        history.append(record)
        info.update(epoch=epoch + 1, step=step, history=history)
        if dist.master:
            write_epoch(cfg, data, model, optimizer, info, record)
        ddp.barrier(dist)
        tally = EpochTally()
        if stop.requested and epoch + 1 < cfg.epochs:  # Ctrl-C during the evaluation: the epoch's state is written
            raise TrainingInterrupted(out, out / STATE_FILE, step, epoch + 1, 0, steps_per_epoch)

    best_val = next((h[task.metric.val_key] for h in history if h["epoch"] == info["best_epoch"]), {})
    test: dict[str, float] = {}
    summary: dict[str, Any] = {}
    if int(info["epoch"]) >= cfg.epochs and dist.master and (out / "best.safetensors").exists():
        test = evaluate_checkpoint(out / "best.safetensors", data, cfg, device)
        summary = summarize(cfg, task, data, history, info["best_epoch"], test)
        labels = bit_labels(cfg)
        write_report(out, summary, history, labels, task.metric)
        log.info("summary (best epoch %s of %d, chosen on validation):\n%s", info["best_epoch"], cfg.epochs, summary_table(summary, labels, task.metric))
    lm = cfg.is_language_model
    return RunResult(out, cfg, history, best_val, {} if lm else test, model, summary, test if lm else {})


def hasb_planner(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int) -> Callable[[int], list | None]:
    """HASB's configurations of iteration ``step`` (drawn from ``(seed, step)`` only: the same on
    every rank and on resume); ``None`` for the other modes."""
    if cfg.mode != "hasb":
        return lambda step: None
    from ..search.hessian import load_traces, sensitivity  # bitswitch.search imports scipy; only HASB needs it

    sampler = RouletteSampler(sensitivity(load_traces(cfg.hessian)), cfg.bits, layers=list(quantized_layers(model)))
    schedule = SwitchSchedule(int(cfg.hasb_warmup_epochs * steps_per_epoch), max(1, int(cfg.hasb_ramp_epochs * steps_per_epoch)), cfg.hasb_p_max)
    return lambda step: supernet_plan(sampler, schedule, step, cfg.bits, seed=cfg.seed)


@dataclass
class EpochTally:
    """What an epoch has done so far: batches, loss sums and seconds (kept in the state of an interrupted epoch)."""

    batches: int = 0
    loss_sums: dict[str, float] = field(default_factory=dict)
    bit_time_s: dict[str, float] = field(default_factory=dict)
    train_time_s: float = 0.0

    def mean_losses(self) -> dict[str, float]:
        return {k: v / max(self.batches, 1) for k, v in self.loss_sums.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "loss_sums": self.loss_sums, "bit_time_s": self.bit_time_s, "train_time_s": self.train_time_s}

    @classmethod
    def resumed(cls, partial: dict[str, Any] | None, steps_per_epoch: int, where: Path) -> EpochTally:
        """The tally of the epoch an interrupted run stopped in (an empty one at an epoch boundary)."""
        if partial is None:
            return cls()
        try:
            tally = cls(int(partial["batches"]), {str(k): float(v) for k, v in partial["loss_sums"].items()},
                        {str(k): float(v) for k, v in partial["bit_time_s"].items()}, float(partial["train_time_s"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StateError(f"{where}: metadata info.partial is malformed ({type(e).__name__}: {e})") from None
        if not 0 < tally.batches < steps_per_epoch:
            raise StateError(f"{where}: the interrupted epoch had done {tally.batches} batches; this run's epochs have {steps_per_epoch}")
        return tally


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: TensorLoader, cfg: TrainConfig, dist: ddp.DistInfo,
                step: int, lr_factor: Callable[[int], float], plan_at: Callable[[int], list | None],
                bar: Progress, tally: EpochTally, stop: StopRequest) -> int:
    """The epoch's batches after the ``tally.batches`` already done, until its end or a requested stop;
    returns the next step number (``tally`` accumulates the losses and times)."""
    for x, y in itertools.islice(ddp.shard_batches(batches, dist), tally.batches, None):
        if cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        losses = train_step(model, optimizer, x, y, cfg, lr_factor(step), dist, tally.bit_time_s, plan_at(step))
        for k, v in losses.items():
            if not math.isfinite(v):
                raise FloatingPointError(f"loss became {v} at step {step} ({k}); lower the learning rate")
            tally.loss_sums[k] = tally.loss_sums.get(k, 0.0) + v
        step += 1
        tally.batches += 1
        bar.update(losses)
        if dist.master and cfg.log_every and step % cfg.log_every == 0:
            log.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
        if stop.requested:
            break
    return step


def write_epoch(cfg: TrainConfig, data: Data | TextData, model: nn.Module, optimizer: torch.optim.Optimizer, info: dict[str, Any],
                record: dict[str, Any]) -> None:
    """The files of a finished epoch: last (and best) checkpoint, a metrics line, the resumable state, a log table."""
    out = Path(cfg.out_dir)
    metric = task_of(cfg).metric
    extra = checkpoint_extra(cfg, data, record["epoch"], record[metric.val_key])
    save(model, out / "last.safetensors", extra=extra)
    if record["best"]:
        save(model, out / "best.safetensors", extra=extra)
    with open(out / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
    save_state(out / STATE_FILE, model, optimizer, info, cfg.to_json())
    log.info("validation %s:\n%s", metric.title, epoch_table(record, cfg.epochs, metric))


__all__ = ["EpochTally", "RunResult", "build_run_model", "checkpoint_extra", "hasb_planner", "read_resumable_state", "run_epochs", "setup_run", "train",
           "train_epoch", "write_epoch"]
