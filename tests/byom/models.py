"""Tiny random-init models from timm, Hugging Face transformers and hand-written code, with inputs.

Every model is a real architecture at a toy size (fewer blocks, narrower, small inputs) so that the
whole matrix runs in minutes on two cores; nothing is downloaded. timm imports torchvision, which has
no CPU build here: the caller puts ``tests/stubs`` on ``sys.path`` first (the ``timm`` fixture in
``tests/conftest.py`` does; scripts run with ``PYTHONPATH=tests/stubs``), a test-only import stand-in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 10
VOCAB = 64
SEQ = 16


@dataclass(frozen=True)
class Case:
    """One model of the matrix: ``build()`` a fresh FP32 model, ``inputs(seed)`` one batch of its inputs.

    ``task`` is ``"classification"`` (logits ``(N, C)``) or ``"next-token"`` (logits ``(N, T, V)``,
    targets are the input ids shifted by one). Inputs are a tensor or a dict of keyword arguments,
    as :func:`bitswitch.nn.dataflow.run_model` takes them.
    """

    family: str
    name: str
    task: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], Any]
    what: str  # the feature of the model the matrix is after
    #: W8A8 against FP32 on the held-out batches: (least top-1 / next-token agreement, most mean
    #: |difference| in output steps). Most models measure 0.95-1.0 and under 2 steps.
    w8_bounds: tuple[float, float] = (0.9, 2.5)

    @property
    def id(self) -> str:
        return f"{self.family}-{self.name}"


# --- tasks ----------------------------------------------------------------------------------------

def logits(output: Any) -> torch.Tensor:
    """The logits of a model's output: a tensor, an HF ``ModelOutput`` or a tuple led by the logits."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    raise TypeError(f"cannot find the logits in a {type(output).__name__}")


def token_ids(inputs: Any) -> torch.Tensor:
    return inputs["input_ids"] if isinstance(inputs, dict) else inputs


def targets(case: Case, inputs: Any, seed: int) -> torch.Tensor:
    """Labels of one batch: random classes, or the input ids themselves for next-token prediction."""
    if case.task == "next-token":
        return token_ids(inputs)
    n = token_ids(inputs).shape[0]
    classes = 3 if case.family == "hf" else CLASSES
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(1000 + seed))


def loss(case: Case, output: Any, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy: of the class, or of each next token."""
    y = logits(output)
    if case.task == "next-token":
        return F.cross_entropy(y[:, :-1].reshape(-1, y.shape[-1]), target[:, 1:].reshape(-1))
    return F.cross_entropy(y, target)


def predictions(case: Case, output: Any) -> torch.Tensor:
    """Top-1 class of every sample, or the predicted next token at every position."""
    return logits(output).argmax(-1).reshape(-1)


# --- inputs ---------------------------------------------------------------------------------------

def images(shape: tuple[int, ...], n: int = 16) -> Callable[[int], torch.Tensor]:
    def make(seed: int) -> torch.Tensor:
        return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
    return make


def tokens(seed: int, n: int = 8) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))


def padded_tokens(seed: int) -> dict[str, torch.Tensor]:
    """Token ids with an attention mask whose last rows are padded (an encoder's usual batch)."""
    ids = tokens(seed)
    mask = torch.ones_like(ids)
    for i, length in enumerate(range(SEQ, SEQ - 8, -2)):
        mask[i, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# --- timm -----------------------------------------------------------------------------------------

IMAGE = (3, 32, 32)


@torch.no_grad()
def settle_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm statistics of the example images, as a trained model has: with timm's initial
    statistics (mean 0, variance 1) the signal shrinks block after block in eval mode, and the
    random-init EfficientNet's logits end near 1e-4, where no step count means anything."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
            m.train()
    for seed in range(100, 104):
        model(images(IMAGE)(seed))
    return model.eval()


def timm_model(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        torch.manual_seed(0)
        return settle_batchnorm(timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs))
    return build


def efficientnet_b0() -> nn.Module:
    """EfficientNet-B0 from timm's own generator at width 0.25 and depth 0.34 (every stage keeps a
    block): ``create_model("efficientnet_b0")`` fixes both multipliers, and at full width the model
    alone would take a third of the matrix's time budget."""
    from timm.models.efficientnet import _gen_efficientnet

    torch.manual_seed(0)
    return settle_batchnorm(_gen_efficientnet("efficientnet_b0", channel_multiplier=0.25, depth_multiplier=0.34, num_classes=CLASSES))


# --- Hugging Face transformers ----------------------------------------------------------------------

HF_SIZE = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64,
               max_position_embeddings=2 * SEQ)


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=2 * SEQ, n_embd=32, n_layer=2, n_head=2, n_inner=64,
                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    return GPT2LMHeadModel(cfg).eval()


def llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**HF_SIZE, num_key_value_heads=1, tie_word_embeddings=True)).eval()


def bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**HF_SIZE, num_labels=3)).eval()


# --- hand-written modules ---------------------------------------------------------------------------

class BNFirstBlock(nn.Module):
    """conv -> BN -> ReLU, with the BN registered *before* the conv that feeds it."""

    def __init__(self, c: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BNBeforeConv(nn.Module):
    """Registration order stem, bn0, block1.bn, block1.conv, block2.bn, block2.conv, fc: pairing a BN
    with the conv registered before it binds ``block2.bn`` to ``block1.conv`` (wrong)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(32)
        self.block1 = BNFirstBlock(32)
        self.block2 = BNFirstBlock(32)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(F.relu(self.bn0(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


class SharedTwice(nn.Module):
    """One conv applied twice (weights shared between two places in the graph), each use with its own BN."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.mix = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.bn1(self.mix(x)))
        x = F.relu(self.bn2(self.mix(x)))
        return self.fc(x.mean((2, 3)))


class VGG(nn.Module):
    """A hand-written VGG for 28x28 grey images: three conv-BN-ReLU-MaxPool stages and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((1, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(64 * 3 * 3, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def custom(cls: type[nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        model = cls()
        for m in model.modules():  # BN statistics as after training, so that BN folding matters
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.2, 0.2)
        return model.eval()
    return build


#: The random-init squeeze-excite nets with data-matched BatchNorms amplify any perturbation block
#: after block (W8A8 0.72-0.73 agreement and 3.0-4.1 mean steps from FP32, W4 and W2 about as far as each
#: other); a trained network is far less sensitive, so only these two get the looser bound.
SE_W8_BOUNDS = (0.65, 5.0)

CASES: list[Case] = [
    Case("timm", "mobilenetv3_small_050", "classification", timm_model("mobilenetv3_small_050"), images(IMAGE),
         "squeeze-excite, hard-swish/hard-sigmoid", SE_W8_BOUNDS),
    Case("timm", "efficientnet_b0", "classification", efficientnet_b0, images(IMAGE),
         "depthwise convs, SiLU, squeeze-excite (width 0.25, depth 0.34)", SE_W8_BOUNDS),
    Case("timm", "convnext_atto", "classification", timm_model("convnext_atto", dims=(16, 32, 64, 128), depths=(1, 1, 2, 1)),
         images(IMAGE), "permute + LayerNorm blocks, depthwise 7x7 (dims 16-128, depths 1-1-2-1)"),
    Case("timm", "resnet18", "classification", timm_model("resnet18", channels=(16, 32, 64, 128)), images(IMAGE),
         "timm Linear classifier subclass (channels 16-128)"),
    Case("timm", "vit_tiny_patch16_224", "classification", timm_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=48),
         images(IMAGE), "attention, LayerNorm, GELU (32x32, patch 8, depth 2, width 48)"),
    Case("hf", "gpt2", "next-token", gpt2, tokens, "Conv1D projections, tied LM head (2 layers, width 32, vocab 64)"),
    Case("hf", "llama", "next-token", llama, tokens, "q/k/v/o projections, RMSNorm, SiLU, tied embeddings (2 layers, width 32)"),
    Case("hf", "bert", "classification", bert, padded_tokens, "encoder + pooler + classifier, padded dict inputs (2 layers, width 32)"),
    Case("custom", "bn_before_conv", "classification", custom(BNBeforeConv), images((3, 16, 16)), "a BN registered before its conv"),
    Case("custom", "shared_module", "classification", custom(SharedTwice), images((3, 16, 16)), "one conv used twice"),
    Case("custom", "vgg", "classification", custom(VGG), images((1, 28, 28)), "conv-BN-ReLU-MaxPool"),
]

BY_ID = {c.id: c for c in CASES}
