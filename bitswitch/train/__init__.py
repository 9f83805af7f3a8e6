"""Training: FP32, fixed-precision QAT and joint multi-precision QAT (ALRS, distillation), resumable, DDP.

Typical use::

    from bitswitch.train import TrainConfig, train
    cfg = TrainConfig.from_file("configs/fashion_mnist_joint.yaml").apply_overrides(["epochs=3"])
    result = train(cfg)            # writes config, metrics, last/best checkpoints, plot
    train(cfg, resume=True)        # continues an interrupted run bit-exactly
"""

from .config import CONFIG_VERSION, TrainConfig, check_train_bits
from .data import Data, load_data, make_loader
from .evaluate import evaluate, evaluate_checkpoint
from .loop import RunResult, train
from .optim import alrs_factor, alrs_factors, build_optimizer, param_groups
from .state import StateError

__all__ = [
    "CONFIG_VERSION", "Data", "RunResult", "StateError", "TrainConfig", "alrs_factor", "alrs_factors", "build_optimizer",
    "check_train_bits", "evaluate", "evaluate_checkpoint", "load_data", "make_loader", "param_groups", "train",
]
