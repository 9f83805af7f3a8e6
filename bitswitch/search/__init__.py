"""Mixed-precision search: Hessian traces, budgets, ILP subnet search and its baselines."""

from .baselines import greedy, greedy_path, random_at_cost, uniform
from .budget import Budget, parse_budget
from .hessian import LayerTrace, hessian_traces, load_traces, save_traces, sensitivity
from .ilp import SearchProblem, SearchResult, candidate_pairs, pareto_front
from .measured import config_losses, loss_deltas, rerank
from .objectives import OBJECTIVES, weight_noise
from .subnet import BNRecipe, build_subnet, read_recipe

__all__ = [
    "BNRecipe",
    "Budget",
    "LayerTrace",
    "OBJECTIVES",
    "SearchProblem",
    "SearchResult",
    "build_subnet",
    "candidate_pairs",
    "config_losses",
    "greedy",
    "greedy_path",
    "hessian_traces",
    "load_traces",
    "loss_deltas",
    "pareto_front",
    "parse_budget",
    "random_at_cost",
    "read_recipe",
    "rerank",
    "save_traces",
    "sensitivity",
    "uniform",
    "weight_noise",
]
