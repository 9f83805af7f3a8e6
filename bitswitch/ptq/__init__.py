"""Post-training mixed precision (Pandey et al., Qualcomm 2023): SQNR sensitivity + greedy Pareto.

Entry points: :func:`start_session` (fold BN, quantize with per-channel symmetric weights and
asymmetric activations, set ranges by MSE, find quantizer groups; every choice in a
:class:`PTQConfig`), :meth:`PTQSession.sensitivity` (phase 1), :meth:`PTQSession.search` (phase 2),
:meth:`PTQSession.apply` (the model at a configuration), and :func:`run_ptq` doing all of it in one call.
"""

from .config import DEFAULT_CANDIDATES, PTQConfig
from .fold import fold_batchnorms
from .groups import QuantizerGroup, find_groups, parse_candidates
from .pareto import greedy_sequence
from .phase2 import PTQResult
from .sensitivity import sqnr, sqnr_db
from .session import PTQSession, run_ptq, start_session

__all__ = [
    "DEFAULT_CANDIDATES", "PTQConfig", "PTQResult", "PTQSession", "QuantizerGroup", "find_groups", "fold_batchnorms",
    "greedy_sequence", "parse_candidates", "run_ptq", "sqnr", "sqnr_db", "start_session",
]
