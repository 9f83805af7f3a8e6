"""Hostile and damaged files: checkpoints, training states and PTQ caches (issue 17).

Every edit must give either the identical model or a clear error (CheckpointError/StateError/
ValueError); re-signed edits (an attacker can always write a new digest) must still be refused by
the schema, the shape comparison or the value checks, before memory is spent.
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bitswitch
from bitswitch.export import container
from bitswitch.export.checkpoint import CheckpointError
from bitswitch.models import build
from bitswitch.ptq.cache import read_cache, write_cache
from bitswitch.train.state import StateError, read_state, restore_state, save_state

BITS = (8, 4, 2)
REPO = Path(__file__).resolve().parents[1]  # subprocesses import this checkout


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build("mlp", in_features=16, hidden=8, num_classes=3)
    x = torch.randn(32, 16)
    m.train()
    with torch.no_grad():
        m(x)
    q = bitswitch.quantize(m.eval(), BITS, full_precision=(), **kw)
    bitswitch.calibrate(q, [x])
    return q.eval()


X = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))


def _outputs(model: torch.nn.Module) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for b in BITS:
            bitswitch.set_precision(model, b)
            outs.append(model(X))
    return outs


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, list[torch.Tensor]]:
    path = bitswitch.save(_model(), tmp_path_factory.mktemp("ckpt") / "m.safetensors")
    return path, _outputs(bitswitch.load(path))


def _resign(src: Path, dst: Path, meta_edit=None, tensor_edit=None, error: type[Exception] = CheckpointError) -> Path:
    """What an attacker can do: edit the file and write a valid new digest."""
    tensors, meta = container.read(src, error)
    meta = dict(meta)
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    return container.write(dst, tensors, meta)


def _edit_json(key: str, fn):
    def edit(meta: dict) -> None:
        doc = json.loads(meta[key])
        fn(doc)
        meta[key] = json.dumps(doc)

    return edit


def test_metadata_edits_break_the_digest(saved, tmp_path: Path) -> None:
    """The digest covers the metadata: storage_bits 8 -> 9 or another rounding mode without re-signing fails."""
    path, _ = saved
    raw = path.read_bytes()
    for old, new in ((b'"storage_bits\\": 8', b'"storage_bits\\": 9'), (b'"rounding\\": \\"half_even', b'"rounding\\":   \\"half_up')):
        assert raw.count(old) == 1
        edited = tmp_path / "e.safetensors"
        edited.write_bytes(raw.replace(old, new))
        with pytest.raises(CheckpointError, match="checksum mismatch"):
            bitswitch.load(edited)


@pytest.mark.parametrize("meta_edit, tensor_edit, match", [
    (_edit_json("quant_config", lambda d: d.update(storage_bits=9)), None, r"tensor fc1.weight_int: the file declares I8"),
    (_edit_json("quant_config", lambda d: d.update(rounding="half_up_")), None, r"quant_config.rounding"),
    (_edit_json("quant_config", lambda d: d.update(bits=[8, 4, 4])), None, r"quant_config.bits"),
    (_edit_json("arch", lambda d: d["kwargs"].update(hidden=16000)), None, r"tensor bn1.bn.2.bias: the file declares F32 \[8\], the model needs F32 \[16000\]"),
    (_edit_json("arch", lambda d: d["kwargs"].update(num_classes=10**10)), None, r"tensor fc3"),
    (_edit_json("arch", lambda d: d["kwargs"].update(hidden="x")), None, r"metadata arch: cannot build"),
    (_edit_json("arch", lambda d: d.update(name="os.system")), None, r"arch.name: unknown architecture"),
    (_edit_json("precision", lambda d: d.pop("fc2")), None, r"metadata precision: must list every quantized layer"),
    (_edit_json("precision", lambda d: d.update(fc2=[99, 8])), None, r"precision.fc2"),
    (lambda m: m.update(data_root="/etc"), None, r"metadata data_root: unknown key"),
    (lambda m: m.update(extra="[1]"), None, r"metadata extra: must be an object"),
    (lambda m: m.update(precision="{"), None, r"metadata precision: is not valid JSON"),
    (None, lambda t: t["fc2.weight_quant.scale"].__setitem__(0, 0.0), r"tensor fc2.weight_quant.scale: scales must be non-zero"),
    (None, lambda t: t["fc1.act_quant.scales.4"].fill_(float("nan")), r"tensor fc1.act_quant.scales.4: contains NaN"),
    (None, lambda t: t["bn2.bn.4.running_var"].__setitem__(0, -1.0), r"tensor bn2.bn.4.running_var: BatchNorm variances"),
    (None, lambda t: t["fc1.act_quant.signed_flag"].fill_(7), r"signed_flag: must be -1, 0 or 1"),
    (None, lambda t: t.update(extra_tensor=torch.zeros(2)), r"unexpected \['extra_tensor'\]"),
    (None, lambda t: t.update({"fc1.weight_int": t["fc1.weight_int"].to(torch.int16)}), r"tensor fc1.weight_int: the file declares I16"),
    (lambda m: m.update(tied='{"fc2.weight_int": "fc2.weight_int"}'), None, r"metadata tied: must be an object"),
    (lambda m: m.update(tied='{"a": "b", "b": "c"}'), None, r"metadata tied: 'b' is both an alias and a stored key"),
    (lambda m: m.update(tied='{"fc2.bias": "fc1.bias"}'), None, r"metadata tied: does not match the model's tied tensors"),
    (_edit_json("quant_config", lambda d: d.update(weight_only=["bn1"])), None, r"quant_config.weight_only: 'bn1' is not in"),
    (_edit_json("quant_config", lambda d: d.update(batchnorms={"bn1": "bn2"})), None, r"quant_config.batchnorms: must be"),
    (_edit_json("quant_config", lambda d: d.update(batchnorms={"fc3": "fc1"})), None, r"'fc3' is a QuantLinear|'fc3' is a Linear, not a BatchNorm"),
    (_edit_json("quant_config", lambda d: d.update(quantized=d["quantized"] + ["bn1"])), None, r"'bn1' is a BatchNorm1d, which cannot be quantized"),
    (_edit_json("quant_config", lambda d: d.update(weight_only=["fc2"])), None, r"metadata precision.fc2: \[8, 8\] does not fit a weight-only layer"),
])
def test_resigned_edits_are_refused_naming_the_key(saved, tmp_path: Path, meta_edit, tensor_edit, match) -> None:
    path, _ = saved
    edited = _resign(path, tmp_path / "e.safetensors", meta_edit, tensor_edit)
    with pytest.raises(CheckpointError, match=match):
        bitswitch.load(edited)


def test_codes_outside_the_storage_grid_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = bitswitch.quantize(build("mlp", in_features=16, hidden=8, num_classes=3), (4, 2), full_precision=())
    bitswitch.calibrate(m, [torch.randn(8, 16)])
    path = bitswitch.save(m, tmp_path / "w4.safetensors")
    edited = _resign(path, tmp_path / "e.safetensors", tensor_edit=lambda t: t["fc1.weight_int"].__setitem__((0, 0), 100))
    with pytest.raises(CheckpointError, match=r"fc1.weight_int: codes outside the 4-bit range \[-8, 7\]"):
        bitswitch.load(edited)


BOMB = r"""
import json, resource, sys, torch
import bitswitch
from bitswitch.export import container
from bitswitch.export.checkpoint import CheckpointError
src, dst = sys.argv[1], sys.argv[2]
tensors, meta = container.read(src, CheckpointError)
edits = [("mlp", {"in_features": 16, "hidden": 16000, "num_classes": 3}),
         ("mlp", {"in_features": 16, "hidden": 8, "num_classes": 10**10}),
         ("preact_resnet20", {"depth": 2 * 10**6 + 2})]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name, kwargs in edits:
    meta = dict(meta, arch=json.dumps({"name": name, "kwargs": kwargs}))
    container.write(dst, tensors, meta)
    try:
        bitswitch.load(dst)
    except CheckpointError as e:
        print("refused:", str(e)[-80:])
    else:
        sys.exit("loaded a bomb")
print("peak_growth_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_memory_bomb_headers_fail_fast_with_bounded_memory(saved, tmp_path: Path) -> None:
    """hidden=16000 / num_classes=1e10 / a huge depth in a few-KB file: refused, peak RSS grows < 64 MB.

    Measured as the growth of the peak resident set (ru_maxrss) of a fresh process, so allocations
    inside torch count, which tracemalloc would not see.
    """
    path, _ = saved
    out = subprocess.run([sys.executable, "-c", BOMB, str(path), str(tmp_path / "bomb.safetensors")],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("refused:") == 3, out.stdout
    growth_kb = int(out.stdout.split("peak_growth_kb")[1])
    assert growth_kb < 64 * 1024, out.stdout
    assert (tmp_path / "bomb.safetensors").stat().st_size < 64 * 1024


def _mutations(data: bytes, n: int, seed: int):
    """``n`` single-bit flips and ``n`` random byte edits, seeded, anywhere in ``data``."""
    rng = random.Random(seed)
    for i in range(2 * n):
        buf = bytearray(data)
        pos = rng.randrange(len(buf))
        if i < n:
            buf[pos] ^= 1 << rng.randrange(8)
        else:
            buf[pos] = rng.choice([0, 0x20, 0x22, 0x30, 0x39, 0x7B, 0xFF, rng.randrange(256)])
        if bytes(buf) != data:
            yield pos, bytes(buf)


def test_fuzz_checkpoint_bit_flips_and_byte_edits(saved, tmp_path: Path) -> None:
    path, reference = saved
    data = path.read_bytes()
    mutated = tmp_path / "f.safetensors"
    refused = 0
    for pos, buf in _mutations(data, 150, seed=0):
        mutated.write_bytes(buf)
        try:
            model = bitswitch.load(mutated)
        except ValueError:  # CheckpointError, or a clear ValueError
            refused += 1
            continue
        outs = _outputs(model)
        assert all(torch.equal(a, b) for a, b in zip(outs, reference)), f"byte {pos}: silently different model"
    assert refused > 250


def _state_fixture(tmp_path: Path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(X).sum().backward()
    opt.step()
    path = save_state(tmp_path / "state.safetensors", model, opt, {"epoch": 1, "step": 4, "best": 0.5, "best_epoch": 1, "history": []}, "{}")
    return model, opt, path


def test_fuzz_training_state(tmp_path: Path) -> None:
    model, opt, path = _state_fixture(tmp_path)
    ref_sd = {k: v.clone() for k, v in model.state_dict().items()}
    data = path.read_bytes()
    mutated = tmp_path / "f.safetensors"
    template = _model()
    for pos, buf in _mutations(data, 60, seed=1):
        mutated.write_bytes(buf)
        fresh = copy.deepcopy(template)
        fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
        try:
            tensors, meta = read_state(mutated)
            info = restore_state(tensors, meta, fresh, fresh_opt)
        except ValueError:
            continue
        assert info["epoch"] == 1 and info["step"] == 4, f"byte {pos}"
        assert all(torch.equal(v, ref_sd[k]) for k, v in fresh.state_dict().items()), f"byte {pos}: silently different state"


def test_resigned_state_with_wrong_shapes_or_fields_is_refused(tmp_path: Path) -> None:
    model, opt, path = _state_fixture(tmp_path)
    cases = [
        (lambda m: m.update(info=json.dumps({"epoch": -1, "step": 0, "history": []})), None, "info.epoch"),
        (None, lambda t: t.update({"model.fc1.weight": torch.zeros(3, 3)}), "model.fc1.weight"),
        (None, lambda t: t.update({"optim.0.momentum_buffer": torch.zeros(5)}), "optim.0.momentum_buffer"),
        (None, lambda t: t.update({"optim.999.momentum_buffer": torch.zeros(5)}), "not a parameter index"),
        (None, lambda t: t["model.fc2.weight"].fill_(float("nan")), "NaN"),
    ]
    for meta_edit, tensor_edit, match in cases:
        edited = _resign(path, tmp_path / "e.safetensors", meta_edit, tensor_edit, StateError)
        fresh = _model()
        with pytest.raises(StateError, match=match):
            t, m = read_state(edited)
            restore_state(t, m, fresh, torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9))


def test_fuzz_ptq_cache(tmp_path: Path) -> None:
    work = {"fc1": ["W4A8", "W2A8"], "fc2": ["W4A8"]}
    state = {"fingerprint": "abc", "chunks_done": 2, "signal": 12.5, "noise": {"fc1": {"W4A8": 0.25, "W2A8": 1.5}, "fc2": {"W4A8": 0.125}}}
    path = tmp_path / "p1.json"
    write_cache(path, state)
    assert read_cache(path, "abc", 4, work) == state
    assert read_cache(path, "other run", 4, work) is None
    data = path.read_bytes()
    for pos, buf in _mutations(data, 150, seed=2):
        path.write_bytes(buf)
        try:
            got = read_cache(path, "abc", 4, work)
        except ValueError:
            continue
        assert got == state, f"byte {pos}: silently different cache"
    edited = dict(state, chunks_done=9)
    write_cache(path, edited)
    with pytest.raises(ValueError, match=r"chunks_done must be an integer in \[0, 4\]"):
        read_cache(path, "abc", 4, work)
    write_cache(path, dict(state, noise={"fc1": {"W4A8": -1.0, "W2A8": 1.0}, "fc2": {"W4A8": 0.1}}))
    with pytest.raises(ValueError, match="noise.fc1.W4A8"):
        read_cache(path, "abc", 4, work)


def test_fp32_checkpoints_get_the_same_checks(tmp_path: Path) -> None:
    """A model without quantized layers (quant_config null) is verified and rebuilt the same way."""
    torch.manual_seed(0)
    model = build("mlp", in_features=16, hidden=8, num_classes=3).eval()
    path = bitswitch.save(model, tmp_path / "fp32.safetensors")
    with torch.no_grad():
        assert torch.equal(bitswitch.load(path)(X), model(X))
    bad = _resign(path, tmp_path / "bad.safetensors", tensor_edit=lambda t: t["bn1.running_var"].__setitem__(0, -1.0))
    with pytest.raises(CheckpointError, match="bn1.running_var"):
        bitswitch.load(bad)


def test_deeply_nested_json_is_a_checkpoint_error(saved, tmp_path: Path) -> None:
    """JSON nested deeper than Python recurses: a CheckpointError, not a RecursionError."""
    header = b"[" * 100_000 + b"]" * 100_000
    path = tmp_path / "nested.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError, match="corrupted safetensors header"):
        bitswitch.load(path)
    edited = _resign(saved[0], tmp_path / "e.safetensors", lambda m: m.update(extra="[" * 100_000 + "]" * 100_000))
    with pytest.raises(CheckpointError, match="metadata extra"):
        bitswitch.load(edited)
