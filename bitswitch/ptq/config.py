"""What a post-training session is built with: one frozen, validated :class:`PTQConfig`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .groups import parse_candidates

Pair = tuple[int, int]
DEFAULT_CANDIDATES: tuple[Pair, ...] = ((8, 16), (8, 8), (4, 8))
WEIGHT_RANGES = ("mse", "output")


@dataclass(frozen=True)
class PTQConfig:
    """Every choice a :class:`~bitswitch.ptq.session.PTQSession` makes before phase 1.

    ``candidates`` is the hardware table: ``(weight_bits, act_bits)`` pairs for every op, or a
    mapping from op kind (``conv``, ``depthwise``, ``linear``, ``*``) to pairs.
    """

    candidates: Sequence[Sequence[int]] | Mapping[str, Sequence[Sequence[int]]] = DEFAULT_CANDIDATES
    #: fold every BN that directly follows a conv/linear into it, as a deployment would
    fold_bn: bool = True
    #: layer names (or patterns) kept in FP32, outside every candidate table
    full_precision: tuple[str, ...] = ()
    #: learn the rounding of each weight at ``adaround_bits`` (default: every weight bit-width below 8)
    adaround: bool = False
    adaround_bits: tuple[int, ...] | None = None
    adaround_iters: int = 300
    #: sampled input rows per image and layer for AdaRound, bias correction and output-aware ranges
    adaround_rows: int = 256
    #: per (layer, weight bits): the bias that cancels the mean output shift of the rounded weights
    bias_correct: bool = False
    #: per-channel weight clipping by weight MSE (``"mse"``) or layer output MSE (``"output"``)
    weight_ranges: str = "mse"
    #: run channels-last (~3x faster for depthwise-heavy CNNs on CPU; same results)
    channels_last: bool = True
    #: activation values sampled per layer for the range search
    sample_size: int = 1 << 16
    #: calibration samples per forward pass
    chunk_size: int = 32
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        parse_candidates(self.candidates)  # raises ValueError naming the bad entry
        object.__setattr__(self, "full_precision", tuple(self.full_precision))
        if self.adaround_bits is not None:
            object.__setattr__(self, "adaround_bits", tuple(self.adaround_bits))
        for name in ("adaround_iters", "adaround_rows", "sample_size", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.weight_ranges not in WEIGHT_RANGES:
            raise ValueError(f"weight_ranges must be 'mse' (weight error) or 'output' (layer output error), got {self.weight_ranges!r}")

    def candidate_table(self) -> dict[str, list[Pair]]:
        """The candidates as ``{op kind or "*": [(w, a), ...]}``, highest cost first."""
        return parse_candidates(self.candidates)
