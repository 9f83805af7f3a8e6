"""Integer checkpoints: exact round trips, storage format, damaged and foreign files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import bitswitch
from bitswitch.export.checkpoint import CheckpointError, atomic_write_bytes
from bitswitch.models import build

ARCHS = {
    "preact_resnet20": ((3, 32, 32), {}),
    "preact_resnet8": ((1, 28, 28), {"in_channels": 1}),
    "resnet18": ((3, 32, 32), {"num_classes": 10}),
    "resnet50": ((3, 32, 32), {"num_classes": 10}),
    "mobilenet_v2": ((3, 32, 32), {"num_classes": 10}),
    "small_cnn": ((1, 28, 28), {}),
    "digits_cnn": ((1, 8, 8), {}),
    "mlp": ((64,), {}),
}


def _trained_like(name: str, shape, kwargs, bits=(8, 6, 4, 2), **qkw) -> tuple[nn.Module, torch.Tensor]:
    """A calibrated model whose BN statistics are not the identity (one train-mode pass)."""
    m = build(name, **kwargs)
    x = torch.randn(6, *shape)
    m.train()
    with torch.no_grad():
        m(x)
    q = bitswitch.quantize(m.eval(), bits=bits, **qkw)
    bitswitch.calibrate(q, [x])
    return q.eval(), x


@pytest.mark.parametrize("name", list(ARCHS))
def test_round_trip_is_bit_identical_at_every_bit_width(name: str, tmp_path: Path) -> None:
    shape, kwargs = ARCHS[name]
    q, x = _trained_like(name, shape, kwargs)
    path = bitswitch.save(q, tmp_path / f"{name}.safetensors")
    loaded = bitswitch.load(path)
    assert not loaded.training
    with torch.no_grad():
        for b in (8, 6, 4, 2):
            bitswitch.set_precision(q, b)
            bitswitch.set_precision(loaded, b)
            assert torch.equal(q(x), loaded(x)), f"{name} differs at {b} bits"
        mixed = {n: (2 if i % 2 else 6, 8) for i, n in enumerate(bitswitch.quantized_layers(q))}
        bitswitch.set_precision(q, mixed)
        bitswitch.set_precision(loaded, mixed)
        assert torch.equal(q(x), loaded(x))


def test_file_holds_int8_codes_and_no_fp32_copy(tmp_path: Path) -> None:
    q, _ = _trained_like("preact_resnet20", (3, 32, 32), {})
    path = bitswitch.save(q, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        for name in bitswitch.quantized_layers(q):
            assert f"{name}.weight" not in keys
            codes = f.get_tensor(f"{name}.weight_int")
            assert codes.dtype == torch.int8
            assert torch.equal(codes, bitswitch.quantized_layers(q)[name].integer_codes())
        assert f.get_tensor("conv1.weight").dtype == torch.float32  # FP layer kept as is
    config = json.loads(meta["quant_config"])
    assert config["rounding"] == "half_even" and config["bits"] == [8, 6, 4, 2] and config["storage_bits"] == 8
    assert json.loads(meta["arch"]) == {"name": "preact_resnet20", "kwargs": {}}
    assert meta["format"] == "bitswitch" and meta["format_version"] == "1"
    raw = path.read_bytes()
    assert b"pickle" not in raw and b"torch._utils" not in raw


def test_loaded_model_keeps_precision_and_extra(tmp_path: Path) -> None:
    q, _ = _trained_like("mlp", (64,), {})
    bitswitch.set_precision(q, {"fc2": (4, 6)})
    bitswitch.save(q, tmp_path / "m.safetensors", extra={"note": "hello"})
    loaded = bitswitch.load(tmp_path / "m.safetensors")
    assert bitswitch.get_precision(loaded) == bitswitch.get_precision(q)
    assert loaded.bitswitch_extra == {"note": "hello"}
    with pytest.raises(ValueError, match="integer codes only"):
        bitswitch.set_precision(loaded, None)


def test_lower_storage_precision_and_half_up_rounding_round_trip(tmp_path: Path) -> None:
    q, x = _trained_like("preact_resnet8", (3, 32, 32), {}, bits=(4, 3, 2), rounding="half_up")
    loaded = bitswitch.load(bitswitch.save(q, tmp_path / "m.safetensors"))
    assert loaded.bitswitch_config.storage_bits == 4 and loaded.bitswitch_config.rounding == "half_up"
    with torch.no_grad():
        for b in (4, 3, 2):
            bitswitch.set_precision(q, b)
            bitswitch.set_precision(loaded, b)
            assert torch.equal(q(x), loaded(x))


def test_unshared_variant_stores_fp32_weights(tmp_path: Path) -> None:
    q, x = _trained_like("mlp", (64,), {}, variant="unshared")
    path = bitswitch.save(q, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("fc2.weight").dtype == torch.float32
    loaded = bitswitch.load(path)
    with torch.no_grad():
        for b in (8, 6, 4, 2):
            bitswitch.set_precision(q, b)
            bitswitch.set_precision(loaded, b)
            assert torch.equal(q(x), loaded(x))


def test_custom_architecture_needs_the_model(tmp_path: Path) -> None:
    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))

    torch.manual_seed(1)
    q = bitswitch.quantize(net(), bits=(8, 4))
    x = torch.randn(4, 3, 8, 8)
    bitswitch.calibrate(q, [x])
    path = bitswitch.save(q.eval(), tmp_path / "custom.safetensors")
    with pytest.raises(CheckpointError, match="custom architecture"):
        bitswitch.load(path)
    loaded = bitswitch.load(path, model=net())
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    with pytest.raises(CheckpointError, match="do not match"):
        bitswitch.load(path, model=nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 3)))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    q, _ = _trained_like("mlp", (64,), {})
    return bitswitch.save(q, tmp_path / "m.safetensors")


def test_truncated_file(saved: Path) -> None:
    data = saved.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        saved.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated|too short"):
            bitswitch.load(saved)


def test_corrupted_byte_is_detected(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[-10] ^= 0x55
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        bitswitch.load(saved)


def test_corrupted_header(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[12:20] = b"\xff" * 8
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="header"):
        bitswitch.load(saved)


def test_foreign_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    with pytest.raises(CheckpointError, match="not a bitswitch checkpoint"):
        bitswitch.load(plain)
    pt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, pt)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        bitswitch.load(pt)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        bitswitch.load(text)
    with pytest.raises(FileNotFoundError):
        bitswitch.load(tmp_path / "missing.safetensors")


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"format": "bitswitch", "format_version": "99"})
    with pytest.raises(CheckpointError, match="version '99' is not supported"):
        bitswitch.load(path)


def test_float_models_round_trip_as_float_checkpoints(tmp_path: Path) -> None:
    model = build("small_cnn").eval()
    path = bitswitch.save(model, tmp_path / "fp32.safetensors", extra={"epoch": 3})
    tensors, meta = bitswitch.export.read_checkpoint(path)
    assert (meta["storage"], meta["quant_config"], meta["precision"]) == ("float", None, {})
    assert meta["arch"] == model.bitswitch_arch
    loaded = bitswitch.load(path)
    assert not bitswitch.quantized_layers(loaded) and not loaded.training and loaded.bitswitch_extra == {"epoch": 3}
    assert tensors.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v) and torch.equal(tensors[k], v), k
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    # a custom architecture: rebuilt only into the model the caller passes
    model.bitswitch_arch = None
    bitswitch.save(model, path)
    with pytest.raises(CheckpointError, match="custom architecture"):
        bitswitch.load(path)
    into = bitswitch.load(path, model=build("small_cnn"))
    assert torch.equal(into(x), model(x))
    with pytest.raises(CheckpointError, match="bn1.bias: the file declares F32 \\[32\\], the model needs F32 \\[16\\]"):
        bitswitch.load(path, model=build("digits_cnn"))


def test_atomic_write_leaves_the_old_file_on_failure(saved: Path) -> None:
    before = saved.read_bytes()

    def crash(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(saved, crash)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_atomic_write_gives_new_files_the_umask_mode_and_keeps_an_old_files_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        new = tmp_path / "new.bin"
        atomic_write_bytes(new, lambda tmp: Path(tmp).write_bytes(b"x"))
        assert stat.S_IMODE(new.stat().st_mode) == 0o640  # not mkstemp's private 0600
        os.chmod(new, 0o604)
        atomic_write_bytes(new, lambda tmp: Path(tmp).write_bytes(b"y"))
        assert stat.S_IMODE(new.stat().st_mode) == 0o604 and new.read_bytes() == b"y"
    finally:
        os.umask(old)


def test_checkpoint_is_about_a_quarter_of_fp32_for_resnet18(tmp_path: Path) -> None:
    m = build("resnet18")
    q = bitswitch.quantize(m, bits=(8, 6, 4, 2))
    bitswitch.calibrate(q, [torch.randn(2, 3, 32, 32)])
    path = bitswitch.save(q, tmp_path / "r18.safetensors")
    fp32 = sum(v.numel() * v.element_size() for v in m.state_dict().values())
    assert os.path.getsize(path) / fp32 < 0.30
