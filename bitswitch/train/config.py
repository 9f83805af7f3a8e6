"""The run configuration: one dataclass with every training option, read from YAML/TOML files.

A run is described entirely by a :class:`TrainConfig`: ``bitswitch train CONFIG key=value ...``
loads the file, applies the overrides (type-checked; an unknown key lists the valid ones) and
validates the result before any data is read or any model is built. The resolved config is
versioned and stored in every checkpoint and in the resumable training state, so a run can be
reproduced or resumed from its files alone.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import json
import math
import os
import re
import textwrap
import tokenize
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.factory import check_factory, is_factory
from ..quant.grid import ROUNDING_MODES, check_bits
from ..safe_yaml import MAX_BYTES as MAX_CONFIG_BYTES
from ..safe_yaml import load_yaml

CONFIG_VERSION = 1
MODES = ("fp32", "fixed", "joint", "hasb")
OPTIMIZERS = ("sgd", "adam", "adamw")
#: datasets of text: the run trains a causal language model on next-character prediction
TEXT_DATASETS = ("shakespeare",)
DISTILL = ("none", "inplace", "neighbour")
LOSS_MODES = ("per_bit", "summed")
OPTIMIZER_STATES = ("shared", "per_bit")
ALRS_SCOPES = ("all", "shared")
AUTOCAST = ("none", "bf16")
BEST_METRICS = ("mean", "min")
DEVICE_PATTERN = re.compile(r"(cpu|cuda(:\d+)?)")
FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
#: set to 1 to allow more torch threads than the machine has cores
FORCE_THREADS_ENV = "BITSWITCH_FORCE_THREADS"

#: Keys that may differ between an interrupted run and its resume: they change how the run is
#: displayed or where it runs (out_dir: the run folder may have moved), never what it computes.
RESUME_FREE_KEYS = ("progress", "device", "num_threads", "log_every", "compile_kernels", "compile", "out_dir")


@dataclass
class TrainConfig:
    """Every option of a training run (the comment on each field is its documentation)."""

    version: int = CONFIG_VERSION  # config schema version; files of another version are refused
    # --- what to train -------------------------------------------------------------------------
    mode: str = "joint"  # fp32 | fixed (one bit-width, the separate-QAT baseline) | joint (all `bits` at once)
    bits: list[int] = field(default_factory=lambda: [8, 6, 4, 2])  # weight = activation bit-widths, highest first
    storage_bits: int | None = None  # precision h of the stored integer codes (default: max(bits))
    variant: str = "shared"  # shared (Double Rounding, integer storage) | unshared (per-bit scales, FP32 storage)
    rounding: str = "half_even"  # second rounding of Double Rounding: half_even | half_up | floor
    switchable_bn: bool = True  # one BatchNorm per bit-width
    full_precision: list[str] = field(default_factory=lambda: ["first_last"])  # layers kept FP32 (names/patterns, first_last, or auto: embeddings and head of a transformer; language models need auto or names)
    weight_only: bool = False  # quantize weights only: every layer the run quantizes keeps float inputs (labels w<b>, not w<b>a<b>)
    alrs: bool = True  # adaptive learning-rate scaling of the quantization scales (eta_b = 10^(-delta/2) ...)
    alrs_scope: str = "all"  # alrs on: all (the weight scales every bit-width shares, and each bit's own activation scales) | shared (only the shared weight scales; each bit's own scales learn at lr)
    loss_mode: str = "per_bit"  # per_bit: one optimizer step per bit-width | summed: one step on the summed loss
    distill: str = "none"  # none | inplace (top bit teaches the others) | neighbour (each bit learns from the one above)
    distill_temperature: float = 1.0  # softening temperature of teacher and student logits
    distill_weight: float = 0.5  # loss = (1-w)*CE + w*T^2*KL for distilled bit-widths
    # --- model ---------------------------------------------------------------------------------
    model: str = "digits_cnn"  # a name from bitswitch.models.available(), or package.module:factory returning an nn.Module (imported: your code)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # constructor arguments (num_classes/in_channels are filled from the data when accepted)
    init_from: str | None = None  # FP32 weights to start from: a fp32 run directory or its best.safetensors (hasb: a joint run's checkpoint)
    hessian: str | None = None  # hasb: per-layer trace JSON from `bitswitch hessian` (drives the roulette)
    hasb_warmup_epochs: float = 0.2  # hasb: epochs of uniform configurations before layers start switching
    hasb_ramp_epochs: float = 0.3  # hasb: epochs over which the switch probability ramps from 0 to hasb_p_max
    hasb_p_max: float = 0.5  # hasb: final probability that a layer takes a roulette-drawn bit-width
    calib_batches: int = 4  # training batches used to initialise the quantizer scales
    weight_init: str = "mse"  # weight scale init: mse | std3 | max
    act_init: str = "mse"  # activation scale init: mse | lsq | max
    # --- data ----------------------------------------------------------------------------------
    dataset: str = "digits"  # digits (bundled with scikit-learn) | fashion_mnist | cifar10 | shakespeare (text: a causal language model, data_root = the folder holding plays/) | imagefolder (data_root/train/<class>/*.jpg, data_root/test|val/...) | package.module:callable returning tensors (imported: your code)
    data_root: str | None = None  # dataset folder (unused for digits and callables)
    image_size: int = 0  # imagefolder: resize (short side) and centre-crop every image to this size (0 = the images share one size)
    val_fraction: float = 0.1  # share of the training data held out for checkpoint selection (never the test set)
    split_seed: int = 0  # seed of the train/validation split
    train_subset: int = 0  # use only this many training examples (0 = all); for reduced-budget runs
    test_subset: int = 0  # evaluate the test split on this many images only (0 = all); for reduced-budget runs
    augment: bool = False  # random crop (+ flip for cifar10) on the uint8 batches
    crop_padding: int = 4  # augment: the random crop's shift range in pixels (reflect-padded); 2 suits 28x28 Fashion-MNIST
    cutout: int = 0  # augment: erase one square of this side (pixels) per training image, set to the mean (DeVries & Taylor; 16 for CIFAR-10); 0 = off
    batch_size: int = 128  # global batch size (split across processes under torchrun); language models: windows per batch
    eval_batch_size: int = 1000  # batch size for validation/test (images, or windows of text)
    # --- language models (dataset shakespeare; an image dataset refuses these keys) -------------
    context: int = 64  # characters the model reads per window (its context length; filled into the model's `context` argument)
    steps_per_epoch: int = 0  # batches of random windows per epoch (text has no natural epoch; required, >= 1, for text)
    val_chars: int = 0  # validate each epoch on the first N characters of the validation split (0 = all of it); the test split is always evaluated in full
    # --- optimisation --------------------------------------------------------------------------
    epochs: int = 10  # training epochs
    optimizer: str = "adam"  # sgd | adam | adamw (decoupled weight decay)
    lr: float = 1e-3  # base learning rate (the weights' rate; scales get eta_b * lr with ALRS)
    scale_lr_mult: float = 1.0  # extra multiplier on the scales' learning rate
    bit_lr_mult: list[float] = field(default_factory=list)  # joint/hasb, loss_mode per_bit: one multiplier per bit-width (order of bits) on every rate of that bit-width's optimizer step, e.g. [0.25, 0.25, 0.5, 1] slows the steps of the easy high precisions; [] = 1 for every bit-width
    optimizer_state: str = "shared"  # joint/hasb, loss_mode per_bit: shared = one optimizer state (Adam moments, SGD momentum) updated by every bit-width's step | per_bit = each bit-width's step keeps its own (one copy per bit-width)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # SGD Nesterov momentum
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam betas
    weight_decay: float = 5e-5  # applied to conv/linear weights only (never to scales, BN or biases)
    warmup_epochs: float = 0.0  # linear warm-up length (fractions allowed)
    min_lr_ratio: float = 0.0  # cosine schedule ends at lr * min_lr_ratio
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    grad_clip: float = 0.0  # clip the gradient norm to this value (0 = off)
    seed: int = 0  # seed of initialisation, data order and augmentation
    best_metric: str = "mean"  # checkpoint selection on the validation metric: mean over bit-widths, or min = the worst bit-width (lowest accuracy, highest loss)
    # --- run -----------------------------------------------------------------------------------
    out_dir: str = "runs/default"  # run directory: config, metrics, checkpoints, plot
    device: str = "cpu"  # cpu | cuda | cuda:N (under torchrun each process takes cuda:LOCAL_RANK)
    num_threads: int = 0  # torch intra-op threads (0 = torch default)
    progress: bool = True  # tqdm progress bars (also off when stdout is not a terminal)
    log_every: int = 0  # also log the running loss every N iterations (0 = only per epoch)
    compile_kernels: bool = False  # torch.compile the activation-quantizer kernels (faster QAT on CPU after ~20 s of compilation)
    compile: bool = False  # torch.compile the whole model for the training steps (one compilation per bit-width; not with hasb)
    channels_last: bool = False  # convolutions in NHWC memory layout (1.2-1.4x faster CPU training steps, benchmarks/results/train_throughput.md)
    autocast: str = "none"  # none | bf16: the FP32 training forward under bfloat16 autocast (mode fp32 only; fast on CPUs with avx512_bf16/AMX, emulated and slow elsewhere)

    # ------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` for any bad option or combination (before anything is run)."""
        if self.version != CONFIG_VERSION:
            raise ValueError(f"config version {self.version} is not supported (this bitswitch reads version {CONFIG_VERSION})")
        _choice("mode", self.mode, MODES)
        _choice("variant", self.variant, ("shared", "unshared"))
        _choice("rounding", self.rounding, ROUNDING_MODES)
        _choice("loss_mode", self.loss_mode, LOSS_MODES)
        _choice("alrs_scope", self.alrs_scope, ALRS_SCOPES)
        _choice("distill", self.distill, DISTILL)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("best_metric", self.best_metric, BEST_METRICS)
        _choice("weight_init", self.weight_init, ("mse", "std3", "max"))
        _choice("act_init", self.act_init, ("mse", "lsq", "max"))
        _choice("autocast", self.autocast, AUTOCAST)
        if self.autocast != "none" and self.mode != "fp32":
            raise ValueError(f"autocast={self.autocast!r} suits mode 'fp32' only: bfloat16 keeps 8 significant bits, so a quantized "
                             f"model's 8-bit grid would not survive its convolutions (mode is {self.mode!r})")
        if self.mode != "fp32":
            self.bits = list(check_train_bits(self.bits, self.storage_bits))
            if self.mode == "hasb" and (not self.hessian or not self.init_from or len(self.bits) < 2):
                raise ValueError("mode 'hasb' continues a joint run: set init_from (its checkpoint), hessian (its trace JSON) and at least two bits")
            if self.mode == "fixed" and len(self.bits) != 1:
                raise ValueError(f"mode 'fixed' trains one bit-width per model; got bits={self.bits} (use mode 'joint', or one run per bit-width)")
            if self.distill != "none" and len(self.bits) < 2:
                raise ValueError(f"distill={self.distill!r} needs at least two bit-widths, got bits={self.bits}")
        for name in ("model", "dataset"):
            if is_factory(getattr(self, name)):
                check_factory(getattr(self, name), name)
        if self.dataset == "imagefolder" and not self.data_root:
            raise ValueError("dataset 'imagefolder' reads data_root/train/<class>/* and data_root/test/<class>/* (or val/): set data_root")
        if self.image_size and self.dataset != "imagefolder":
            raise ValueError(f"image_size resizes the images of dataset 'imagefolder'; dataset {self.dataset!r} has its own size (set image_size=0)")
        self._validate_task()
        if self.compile and self.mode == "hasb":
            raise ValueError("compile=true does not suit mode 'hasb': every step draws new per-layer bit-widths, each one a recompilation")
        if self.compile and self.compile_kernels:
            raise ValueError("compile and compile_kernels are both set: choose one (compile=true compiles the kernels with the whole model)")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1) so checkpoints are chosen on held-out training data, got {self.val_fraction}")
        for name in ("epochs", "batch_size", "eval_batch_size", "calib_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "distill_temperature", "scale_lr_mult"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("image_size", "crop_padding", "cutout", "weight_decay", "warmup_epochs", "label_smoothing", "grad_clip", "min_lr_ratio", "train_subset", "test_subset", "num_threads", "log_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.bit_lr_mult:
            self._validate_bit_lr_mult()
        _choice("optimizer_state", self.optimizer_state, OPTIMIZER_STATES)
        if self.optimizer_state == "per_bit" and (self.mode not in ("joint", "hasb") or self.loss_mode != "per_bit"):
            raise ValueError(f"optimizer_state 'per_bit' keeps one optimizer state per bit-width's step: it needs mode joint or hasb "
                             f"with loss_mode per_bit (got mode {self.mode!r}, loss_mode {self.loss_mode!r})")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if self.cutout and not self.augment:
            raise ValueError(f"cutout={self.cutout} is training augmentation: set augment: true as well (or cutout: 0)")
        if self.label_smoothing >= 1.0:
            raise ValueError(f"label_smoothing must be < 1, got {self.label_smoothing}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas}")
        if not DEVICE_PATTERN.fullmatch(str(self.device)):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        self._validate_ranges()

    def _validate_bit_lr_mult(self) -> None:
        if self.mode not in ("joint", "hasb"):
            raise ValueError(f"bit_lr_mult scales each bit-width's step of a joint or hasb run; mode {self.mode!r} has one rate (set lr, and bit_lr_mult: [])")
        if self.loss_mode != "per_bit":
            raise ValueError("bit_lr_mult scales each bit-width's own optimizer step: loss_mode 'summed' takes one step for all (use per_bit)")
        if len(self.bit_lr_mult) != len(self.bits):
            raise ValueError(f"bit_lr_mult needs one multiplier per bit-width of bits={self.bits}, got {self.bit_lr_mult}")
        if not all(m > 0 for m in self.bit_lr_mult):
            raise ValueError(f"bit_lr_mult must be > 0 for every bit-width, got {self.bit_lr_mult}")

    @property
    def is_language_model(self) -> bool:
        """Does the run train a causal language model (a text dataset) rather than an image classifier?"""
        return self.dataset in TEXT_DATASETS

    def _validate_task(self) -> None:
        """Keys of one kind of data given with the other kind: a clear error, not an ignored option."""
        defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default) for f in dataclasses.fields(self)}
        changed = [k for k in defaults if getattr(self, k) != defaults[k]]
        for name in ("context", "steps_per_epoch", "val_chars"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.is_language_model:
            wrong = [k for k in ("context", "steps_per_epoch", "val_chars") if k in changed]
            if wrong:
                raise ValueError(f"{', '.join(wrong)} {'applies' if len(wrong) == 1 else 'apply'} to language models (dataset "
                                 f"{' or '.join(TEXT_DATASETS)}); dataset {self.dataset!r} is images: remove {'it' if len(wrong) == 1 else 'them'}")
            return
        wrong = [k for k in ("image_size", "augment", "crop_padding", "cutout", "val_fraction", "split_seed", "train_subset", "test_subset") if k in changed]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} {'applies' if len(wrong) == 1 else 'apply'} to image datasets; dataset {self.dataset!r} is text "
                             "with a fixed train/validation/test split (its README): remove it, or use val_chars to shorten validation")
        if self.context < 1 or self.steps_per_epoch < 1:
            raise ValueError(f"dataset {self.dataset!r} trains on random windows: set context >= 1 and steps_per_epoch >= 1 "
                             f"(got context={self.context}, steps_per_epoch={self.steps_per_epoch})")
        if self.mode == "hasb":
            raise ValueError(f"mode 'hasb' trains image models; dataset {self.dataset!r} is text (use mode fp32, fixed or joint)")
        if self.mode != "fp32" and self.full_precision == ["first_last"]:
            raise ValueError("full_precision=[first_last] keeps the first Linear layer (the first block's query projection) in float; "
                             "for a language model use full_precision=[auto] (embeddings and head float, every block quantized) or name the layers")
        if "context" in self.model_kwargs:
            raise ValueError(f"model_kwargs.context={self.model_kwargs['context']!r}: set the top-level key context instead (the data windows use it too)")

    def _validate_ranges(self) -> None:
        """Finite numbers, probabilities in [0, 1], threads within the machine, a real out_dir."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        for name in ("hasb_p_max", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("hasb_warmup_epochs", "hasb_ramp_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.momentum < 1.0 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"momentum and betas must be in [0, 1), got momentum={self.momentum}, betas={self.betas}")
        cores = os.cpu_count() or 1
        if self.num_threads > cores and os.environ.get(FORCE_THREADS_ENV) != "1":
            raise ValueError(f"num_threads must be in [0, {cores}] (this machine's cores), got {self.num_threads}; "
                             f"set {FORCE_THREADS_ENV}=1 to allow more")
        if not str(self.out_dir).strip():
            raise ValueError(f"out_dir must name a folder, got {self.out_dir!r}")
        if Path(self.out_dir).exists() and not Path(self.out_dir).is_dir():
            raise ValueError(f"out_dir {self.out_dir!r} exists and is not a folder")

    # ------------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "config") -> TrainConfig:
        """Build from a mapping, refusing unknown keys and values of the wrong type."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected a mapping of option -> value, got {type(d).__name__}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for k, v in d.items():
            if k not in hints:
                raise ValueError(unknown_key_message(k, where))
            kwargs[k] = _coerce(k, v, hints[k], where)
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a ``.yaml``/``.yml`` or ``.toml`` file (an empty file gives the defaults)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{path}: {path.stat().st_size} bytes; config files are limited to {MAX_CONFIG_BYTES}")
        text = path.read_text()
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            data = load_yaml(text, str(path)) or {}
        elif suffix == ".toml":
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path}: not valid TOML ({e})") from None
        elif suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        else:
            raise ValueError(f"{path}: config files must be .yaml, .yml, .toml or .json")
        return cls.from_dict(data, where=str(path))

    def apply_overrides(self, overrides: Sequence[str]) -> TrainConfig:
        """Return a copy with ``key=value`` overrides applied (values parsed as YAML scalars/lists)."""
        data = self.to_dict()
        hints = typing.get_type_hints(type(self))
        for item in overrides:
            key, sep, raw = item.partition("=")
            key = key.strip().lstrip("-").replace("-", "_")
            if not sep or not key:
                raise ValueError(f"override {item!r} must look like key=value")
            if key not in hints:
                raise ValueError(unknown_key_message(key, "override"))
            try:
                value = load_yaml(raw, f"override {key}") if raw.strip() else None
            except ValueError:
                value = raw
            if typing.get_origin(hints[key]) is list and isinstance(value, str) and "," in value:
                value = [load_yaml(v, f"override {key}") for v in value.split(",") if v.strip()]  # bits=8,6,4,2
            if hints[key] is str or (hints[key] == (str | None) and value is not None):
                value = raw  # never reinterpret a string option ("1e-3" stays text, "null" for Optional only)
            data[key] = _coerce(key, value, hints[key], "override")
        return type(self).from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def diff(self, other: TrainConfig, ignore: Sequence[str] = RESUME_FREE_KEYS) -> dict[str, tuple[Any, Any]]:
        """Keys whose values differ (``{key: (self, other)}``), ignoring ``ignore``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@functools.cache
def field_docs() -> list[tuple[str, str, str]]:
    """``(section, key, comment)`` of every :class:`TrainConfig` field, in order.

    The comments in the class body are the options' documentation; they are read from its source
    once, so ``bitswitch train --help`` and the class cannot drift apart.
    """
    source = textwrap.dedent(inspect.getsource(TrainConfig))
    comments = {tok.start[0]: tok.string.lstrip("#").strip() for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    headings = {line: text.strip("- ") for line, text in comments.items() if text.startswith("---")}
    out = []
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            section = max(((line, h) for line, h in headings.items() if line < node.lineno), default=(0, "general"))[1]
            out.append((section, node.target.id, comments.get(node.lineno, "")))
    return out


def field_default(name: str) -> Any:
    """The default value of a :class:`TrainConfig` field."""
    f = TrainConfig.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def check_train_bits(bits: Any, storage_bits: int | None = None) -> tuple[int, ...]:
    """A training bit list must be non-empty, strictly decreasing, unique and <= storage precision.

    Unlike :func:`bitswitch.quant.grid.check_bit_list` an unsorted list is an error here: the order
    is the order of the per-bit optimizer steps, so a config that says otherwise is a mistake.
    """
    if isinstance(bits, bool) or not isinstance(bits, (list, tuple)):
        raise ValueError(f"bits must be a list of bit-widths, highest first (e.g. [8, 6, 4, 2]), got {bits!r}")
    if not bits:
        raise ValueError("bits must not be empty; e.g. bits=[8,6,4,2]")
    for b in bits:
        check_bits(b, what="each entry of bits")
    if len(set(bits)) != len(bits):
        raise ValueError(f"bits contains repeated bit-widths: {list(bits)}")
    if list(bits) != sorted(bits, reverse=True):
        raise ValueError(f"bits must be sorted from highest to lowest (the training order), got {list(bits)}; did you mean {sorted(bits, reverse=True)}?")
    if storage_bits is not None:
        check_bits(storage_bits, what="storage_bits")
        if bits[0] > storage_bits:
            raise ValueError(f"bits {list(bits)} contain a bit-width above the storage precision storage_bits={storage_bits}")
    return tuple(bits)


def unknown_key_message(key: str, where: str) -> str:
    import difflib

    keys = TrainConfig.keys()
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown config key {key!r}{hint}; valid keys: {', '.join(keys)}"


def _choice(name: str, value: Any, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(valid)}; got {value!r}")


def _coerce(key: str, value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the field's type hint; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0], where)
    bad = ValueError(f"{where}: {key} must be of type {_type_name(hint)}, got {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, str) and FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as text; the number is what was meant
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin is list:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and key != "full_precision":
            value = [value]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(key, v, args[0], where) for v in value]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


__all__ = ["TrainConfig", "CONFIG_VERSION", "check_train_bits", "field_default", "field_docs", "RESUME_FREE_KEYS"]
