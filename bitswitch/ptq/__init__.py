"""Post-training mixed precision (Pandey et al., Qualcomm 2023): SQNR sensitivity + greedy Pareto.

Entry points: :func:`prepare` (fold BN, quantize with per-channel symmetric weights and asymmetric
activations, set ranges by MSE, find quantizer groups), :meth:`PTQSession.sensitivity` (phase 1),
:meth:`PTQSession.search` (phase 2), and :func:`run_ptq` doing all of it in one call.
"""

from .api import DEFAULT_CANDIDATES, PTQResult, PTQSession, prepare, run_ptq
from .fold import fold_batchnorms
from .groups import QuantizerGroup, find_groups, parse_candidates
from .pareto import greedy_sequence
from .sensitivity import sqnr, sqnr_db

__all__ = [
    "DEFAULT_CANDIDATES", "PTQResult", "PTQSession", "QuantizerGroup", "find_groups", "fold_batchnorms",
    "greedy_sequence", "parse_candidates", "prepare", "run_ptq", "sqnr", "sqnr_db",
]
