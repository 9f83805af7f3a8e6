"""Tests for the model zoo: shapes, torchvision compatibility, registry and strict loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bitswitch import models
from bitswitch.models import available, build, load_state_dict_strict, load_weights

# name -> (input shape without batch, number of outputs)
INPUTS: dict[str, tuple[tuple[int, ...], int]] = {
    "preact_resnet20": ((3, 32, 32), 10),
    "preact_resnet8": ((3, 32, 32), 10),
    "resnet18": ((3, 64, 64), 1000),
    "resnet50": ((3, 64, 64), 1000),
    "mobilenet_v2": ((3, 64, 64), 1000),
    "small_cnn": ((1, 28, 28), 10),
    "mlp": ((1, 8, 8), 10),
    "digits_cnn": ((1, 8, 8), 10),
    "efficientnet_lite0": ((3, 64, 64), 1000),
    "tiny_transformer": ((8, 16), 10),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    """Build every model once (ResNet-50 construction dominates the runtime)."""
    torch.manual_seed(0)
    return {name: build(name) for name in available() if name not in TOKEN_MODELS}


#: models that read token ids, not float tensors (tested on their own below)
TOKEN_MODELS = {"char_llama"}


def test_registry_lists_all_models() -> None:
    assert set(available()) == set(INPUTS) | TOKEN_MODELS
    assert available() == sorted(available())


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_forward_shape(zoo: dict[str, nn.Module], name: str) -> None:
    torch.manual_seed(0)
    shape, classes = INPUTS[name]
    model = zoo[name].eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


def test_char_llama_reads_token_ids_with_a_tied_head() -> None:
    model = build("char_llama", vocab_size=82, dim=32, layers=1, heads=2, hidden=64, context=16).eval()
    with torch.no_grad():
        logits = model(torch.randint(0, 82, (2, 16))).logits
    assert logits.shape == (2, 16, 82) and torch.isfinite(logits).all()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.bitswitch_arch == {"name": "char_llama", "kwargs": {"vocab_size": 82, "dim": 32, "layers": 1, "heads": 2, "hidden": 64, "context": 16}}
    with pytest.raises(ValueError, match="divisible"):
        build("char_llama", dim=30, heads=4)


def test_train_mode_backward_small() -> None:
    torch.manual_seed(0)
    model = build("preact_resnet8", num_classes=5)
    out = model(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (4, 5)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "name,expected",
    [
        ("resnet18", 11_689_512),
        ("resnet50", 25_557_032),
        ("mobilenet_v2", 3_504_872),
        # 432 stem + 14,016 + 51,552 + 205,504 stages + 128 final BN + 650 fc.
        ("preact_resnet20", 272_282),
        ("preact_resnet8", 77_850),
        ("small_cnn", 94_186),
        ("mlp", 26_634),
        ("digits_cnn", 24_058),
    ],
)
def test_param_counts(zoo: dict[str, nn.Module], name: str, expected: int) -> None:
    assert n_params(zoo[name]) == expected


@pytest.mark.parametrize(
    "name,n_keys", [("resnet18", 122), ("resnet50", 320), ("mobilenet_v2", 314)]
)
def test_torchvision_state_dict_key_count(
    zoo: dict[str, nn.Module], name: str, n_keys: int
) -> None:
    assert len(zoo[name].state_dict()) == n_keys


@pytest.mark.parametrize(
    "name,key,shape",
    [
        ("resnet18", "conv1.weight", (64, 3, 7, 7)),
        ("resnet18", "layer4.1.bn2.running_var", (512,)),
        ("resnet18", "layer2.0.downsample.0.weight", (128, 64, 1, 1)),
        ("resnet18", "layer2.0.downsample.1.running_mean", (128,)),
        ("resnet18", "fc.weight", (1000, 512)),
        ("resnet50", "layer1.0.downsample.0.weight", (256, 64, 1, 1)),
        ("resnet50", "layer1.0.conv3.weight", (256, 64, 1, 1)),
        ("resnet50", "layer4.2.bn3.weight", (2048,)),
        ("resnet50", "fc.weight", (1000, 2048)),
        ("mobilenet_v2", "features.0.0.weight", (32, 3, 3, 3)),
        ("mobilenet_v2", "features.1.conv.0.0.weight", (32, 1, 3, 3)),
        ("mobilenet_v2", "features.1.conv.1.weight", (16, 32, 1, 1)),
        ("mobilenet_v2", "features.2.conv.1.0.weight", (96, 1, 3, 3)),
        ("mobilenet_v2", "features.17.conv.2.weight", (320, 960, 1, 1)),
        ("mobilenet_v2", "features.18.0.weight", (1280, 320, 1, 1)),
        ("mobilenet_v2", "features.18.1.running_var", (1280,)),
        ("mobilenet_v2", "classifier.1.weight", (1000, 1280)),
        ("preact_resnet20", "conv1.weight", (16, 3, 3, 3)),
        ("preact_resnet20", "layer1.0.bn1.weight", (16,)),
        ("preact_resnet20", "layer1.2.conv2.weight", (16, 16, 3, 3)),
        ("preact_resnet20", "layer2.0.shortcut.weight", (32, 16, 1, 1)),
        ("preact_resnet20", "layer3.0.shortcut.weight", (64, 32, 1, 1)),
        ("preact_resnet20", "bn.running_mean", (64,)),
        ("preact_resnet20", "fc.weight", (10, 64)),
        ("mlp", "bn2.running_var", (128,)),
        ("mlp", "fc3.weight", (10, 128)),
    ],
)
def test_key_names_and_shapes(
    zoo: dict[str, nn.Module], name: str, key: str, shape: tuple[int, ...]
) -> None:
    sd = zoo[name].state_dict()
    assert key in sd, f"{key} missing from {name}"
    assert tuple(sd[key].shape) == shape


def test_preact_structure() -> None:
    model = build("preact_resnet20")
    assert "layer1.0.shortcut" not in dict(model.named_modules())
    assert isinstance(model.layer2[0].shortcut, nn.Conv2d)
    assert model.layer2[0].shortcut.stride == (2, 2)
    assert model.layer2[0].shortcut.bias is None
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 3
    # Pre-activation: no BN directly after the stem conv.
    assert not hasattr(model, "bn1")


@pytest.mark.parametrize("size", [32, 28])
def test_preact_input_sizes(size: int) -> None:
    torch.manual_seed(0)
    model = build("preact_resnet8", in_channels=1, width=8).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_preact_bad_depth() -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        models.resnet_cifar.PreActResNet(depth=21)


def test_mobilenet_width_mult() -> None:
    model = build("mobilenet_v2", num_classes=10, width_mult=0.5)
    sd = model.state_dict()
    assert sd["features.0.0.weight"].shape == (16, 3, 3, 3)
    assert sd["classifier.1.weight"].shape == (10, 1280)


def test_build_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet19'") as exc:
        build("resnet19")
    for name in available():
        assert name in str(exc.value)


def test_build_unknown_kwarg() -> None:
    with pytest.raises(ValueError, match="'depth'") as exc:
        build("preact_resnet20", depth=32)
    for accepted in ("num_classes", "in_channels", "width"):
        assert accepted in str(exc.value)


def test_arch_round_trip() -> None:
    torch.manual_seed(0)
    model = build("preact_resnet8", num_classes=7, in_channels=1, width=8)
    arch = model.bitswitch_arch
    assert arch == {
        "name": "preact_resnet8",
        "kwargs": {"num_classes": 7, "in_channels": 1, "width": 8},
    }
    arch = json.loads(json.dumps(arch))
    rebuilt = build(arch["name"], **arch["kwargs"])
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in rebuilt.state_dict().items()
    }
    load_state_dict_strict(rebuilt, model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k])


def test_register_duplicate_rejected() -> None:
    with pytest.raises(ValueError, match="already registered"):
        models.register("mlp")(models.small.MLP)


def test_strict_loader_reports_problems() -> None:
    model = build("mlp")
    sd = dict(model.state_dict())
    del sd["fc1.weight"]
    sd["extra.weight"] = torch.zeros(3)
    sd["fc3.weight"] = torch.zeros(5, 128)
    with pytest.raises(ValueError) as exc:
        load_state_dict_strict(model, sd)
    msg = str(exc.value)
    assert "1 missing key(s): fc1.weight" in msg
    assert "1 unexpected key(s): extra.weight" in msg
    assert (
        "1 shape mismatch(es): fc3.weight (checkpoint (5, 128) vs model (10, 128))"
        in msg
    )


def test_strict_loader_truncates_long_lists() -> None:
    model = build("preact_resnet8")
    with pytest.raises(ValueError, match=r"missing key\(s\).*\(\+\d+ more\)"):
        load_state_dict_strict(model, {})


def test_strict_loader_ignores_num_batches_tracked() -> None:
    torch.manual_seed(0)
    src, dst = build("mlp"), build("mlp")
    sd = {
        k: v
        for k, v in src.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    sd["bn_old.num_batches_tracked"] = torch.tensor(3)
    load_state_dict_strict(dst, sd)
    assert torch.equal(dst.fc1.weight, src.fc1.weight)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_load_weights_formats(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    src, dst = build("digits_cnn"), build("digits_cnn")
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    else:
        torch.save(src.state_dict(), path)
    assert load_weights(dst, path) is dst
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])


def test_load_weights_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_weights(build("mlp"), path)


def test_load_weights_wrong_model(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(build("mlp", hidden=64).state_dict(), path)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_weights(build("mlp"), path)


def test_small_cnn_pool_keeps_the_map_for_the_head():
    gap, full = build("small_cnn"), build("small_cnn", pool=7)
    assert full.fc.in_features == 128 * 49 and gap.fc.in_features == 128
    assert full(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="pool must be >= 1"):
        build("small_cnn", pool=0)
