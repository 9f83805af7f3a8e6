"""Training: FP32, fixed-precision QAT and joint multi-precision QAT (ALRS, distillation), resumable, DDP.

Typical use::

    from bitswitch.train import TrainConfig, train
    cfg = TrainConfig.from_file("configs/fashion_mnist_joint.yaml").apply_overrides(["epochs=3"])
    result = train(cfg)            # writes config, metrics, last/best checkpoints, plot
                                   # Ctrl-C: the state at that step is saved, then TrainingInterrupted
    train(cfg, resume=True)        # continues an interrupted run bit-exactly (mid-epoch too)

Your own model and loop (no config)::

    from bitswitch.train import alrs_param_groups, joint_step
    opt = torch.optim.Adam(alrs_param_groups(qmodel, 1e-3))      # ALRS: scales of bit b at eta_b * lr
    for batch in loader:
        losses = joint_step(qmodel, batch, loss_fn, opt, distill=True)   # {8: loss, 6: ..., 2: ...}
"""

from .config import CONFIG_VERSION, TrainConfig, check_train_bits
from .data import Data, TextData, load_data, make_loader
from .evaluate import evaluate
from .interrupt import TrainingInterrupted
from .loop import RunResult, train
from .optim import alrs_factor, alrs_factors, alrs_param_groups, build_optimizer, model_bits, param_groups
from .state import StateError
from .step import call_model, cross_entropy_loss, joint_step, next_token_loss
from .task import evaluate_checkpoint

__all__ = [
    "CONFIG_VERSION", "Data", "RunResult", "StateError", "TextData", "TrainConfig", "TrainingInterrupted", "alrs_factor", "alrs_factors", "alrs_param_groups", "build_optimizer",
    "call_model", "check_train_bits", "cross_entropy_loss", "evaluate", "evaluate_checkpoint", "joint_step", "load_data", "make_loader",
    "model_bits", "next_token_loss", "param_groups", "train",
]
