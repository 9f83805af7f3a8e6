"""Packed low-precision storage: exact reconstruction at every kept bit-width."""

from __future__ import annotations

import pytest
import torch

import bitswitch
from bitswitch.export.checkpoint import read_checkpoint
from bitswitch.export.compact import compact_codes, expand_codes, pack_bits, save_compact, unpack_bits, verify_compact
from bitswitch.models import build
from bitswitch.quant.grid import ROUNDING_MODES, requantize


@pytest.mark.parametrize("rounding", ROUNDING_MODES)
@pytest.mark.parametrize("high", [8, 6])
def test_expanded_codes_exact_for_every_kept_bit(rounding, high):
    codes = torch.arange(-(2 ** (high - 1)), 2 ** (high - 1))
    for p in range(2, high):
        keep = tuple(range(p, 1, -1))
        wp, ties = compact_codes(codes, high, keep, rounding)
        rebuilt = expand_codes(wp, ties, high, p)
        for b in keep:
            assert torch.equal(requantize(codes, high, b, rounding), requantize(rebuilt, high, b, rounding)), (p, b)


def test_double_rounding_without_ties_is_not_exact():
    # e.g. round(11/8) = 1 but round(round(11/4)/2) = round(1.5) = 2: why the tie plane exists
    codes = torch.arange(-128, 128)
    wp, _ = compact_codes(codes, 8, (4, 3), "half_even")
    assert (requantize(expand_codes(wp, None, 8, 4), 8, 3) != requantize(codes, 8, 3)).any()


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 7])
def test_pack_round_trip(bits):
    v = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (1001,))
    packed = pack_bits(v, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (1001 * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, 1001), v)
    with pytest.raises(ValueError, match="outside"):
        pack_bits(torch.tensor([2 ** (bits - 1)]), bits)


def test_compact_checkpoint_reloads_bit_identical(tmp_path):
    torch.manual_seed(0)
    m = build("preact_resnet8")
    x = torch.randn(8, 3, 16, 16)
    m.train()
    with torch.no_grad():
        m(x)
    q = bitswitch.quantize(m.eval(), bits=(8, 6, 4, 3, 2))
    bitswitch.calibrate(q, [x])
    q.eval()
    full = bitswitch.save(q, tmp_path / "full.safetensors")
    info = save_compact(q, tmp_path / "c.safetensors", (4, 3, 2))
    assert info["weight_bytes_packed"] <= 0.75 * info["weight_bytes_int"] + 64  # 4-bit codes + 2-bit tie plane
    tensors, meta = read_checkpoint(tmp_path / "c.safetensors")
    assert meta["storage"] == "packed" and not any(k.endswith("weight_int") for k in tensors)
    check = verify_compact(q, tmp_path / "c.safetensors", (4, 3, 2), inputs=x)
    assert all(r["codes_differing"] == 0 and r["outputs_bit_identical"] for r in check.values()), check
    reloaded = bitswitch.load(tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="not one this model was built for"):
        bitswitch.set_precision(reloaded, 8)
    # a single kept bit-width needs no tie plane: pure 4-bit codes, two per byte
    single = save_compact(q, tmp_path / "c4.safetensors", (4,))
    assert single["weight_bytes_packed"] * 2 == pytest.approx(single["weight_bytes_int"], abs=64)
    assert verify_compact(q, tmp_path / "c4.safetensors", (4,), inputs=x)["4"]["outputs_bit_identical"]
    # exact=False: smaller, the lower bit-widths are re-derived (and differ somewhere)
    loose = save_compact(q, tmp_path / "c_loose.safetensors", (4, 3, 2), exact=False)
    assert loose["weight_bytes_packed"] < info["weight_bytes_packed"]
    assert verify_compact(q, tmp_path / "c_loose.safetensors", (4, 3, 2))["2"]["codes_differing"] > 0
    # version-1 files still load as before
    assert bitswitch.load(full) is not None
    with pytest.raises(ValueError, match="not in the model's list"):
        save_compact(q, tmp_path / "bad.safetensors", (5,))
