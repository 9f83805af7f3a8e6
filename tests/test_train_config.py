"""TrainConfig: files, overrides, and every bad input refused before training starts."""

from __future__ import annotations

import pytest
import torch

import bitswitch
from bitswitch.models import build
from bitswitch.train import TrainConfig, alrs_factor, alrs_factors, check_train_bits, param_groups, train
from bitswitch.train.config import CONFIG_VERSION


def test_defaults_are_valid_and_roundtrip(tmp_path):
    cfg = TrainConfig()
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert TrainConfig.from_file(tmp_path / "c.yaml") == cfg
    (tmp_path / "c.toml").write_text('mode = "joint"\nbits = [4, 3, 2]\nlr = 1e-3\nepochs = 3\n')
    t = TrainConfig.from_file(tmp_path / "c.toml")
    assert t.bits == [4, 3, 2] and t.epochs == 3 and t.version == CONFIG_VERSION


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key 'epoch'.*did you mean 'epochs'.*valid keys: .*batch_size"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match=r"unknown config key 'lerning_rate'.*valid keys"):
        TrainConfig().apply_overrides(["lerning_rate=0.1"])
    (tmp_path / "bad.yaml").write_text("mode: joint\nbitz: [8, 4]\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown config key 'bitz'"):
        TrainConfig.from_file(tmp_path / "bad.yaml")


def test_overrides_are_type_checked():
    cfg = TrainConfig().apply_overrides(["epochs=3", "lr=0.01", "bits=4,3,2", "alrs=false", "data_root=/x/1e3", "init_from=null"])
    assert (cfg.epochs, cfg.lr, cfg.bits, cfg.alrs, cfg.data_root, cfg.init_from) == (3, 0.01, [4, 3, 2], False, "/x/1e3", None)
    with pytest.raises(ValueError, match="epochs must be of type int"):
        TrainConfig().apply_overrides(["epochs=three"])
    with pytest.raises(ValueError, match="alrs must be of type bool"):
        TrainConfig().apply_overrides(["alrs=7"])
    with pytest.raises(ValueError, match="key=value"):
        TrainConfig().apply_overrides(["epochs"])


@pytest.mark.parametrize(
    "bits, storage, message",
    [([], None, "must not be empty"), ([2, 4, 8], None, "sorted from highest to lowest"), ([8, 4, 4], None, "repeated"),
     ([8, 6], 6, "above the storage precision"), ([1], None, "between 2 and 16"), ("8642", None, "list of bit-widths")],
)
def test_bad_bit_lists(bits, storage, message):
    with pytest.raises(ValueError, match=message):
        check_train_bits(bits, storage)
    with pytest.raises(ValueError, match=message):
        TrainConfig(bits=bits, storage_bits=storage)


def test_bad_options():
    with pytest.raises(ValueError, match="mode must be one of"):
        TrainConfig(mode="multi")
    with pytest.raises(ValueError, match="mode 'fixed' trains one bit-width"):
        TrainConfig(mode="fixed", bits=[8, 4])
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=0.0)
    with pytest.raises(ValueError, match="version 2 is not supported"):
        TrainConfig.from_dict({"version": 2})


@pytest.mark.parametrize(
    "options, message",
    [({"bit_lr_mult": [1.0, 0.5]}, r"one multiplier per bit-width of bits=\[8, 6, 4, 2\]"),
     ({"bit_lr_mult": [1.0, 1.0, 0.0, 1.0]}, "must be > 0"),
     ({"bit_lr_mult": [1.0, 1.0, 1.0, 1.0], "loss_mode": "summed"}, "loss_mode 'summed' takes one step"),
     ({"bit_lr_mult": [0.5], "mode": "fixed", "bits": [4]}, "mode 'fixed' has one rate"),
     ({"bit_lr_mult": [1.0, float("nan"), 1.0, 1.0]}, "must be > 0|finite"),
     ({"optimizer_state": "per_layer"}, "optimizer_state must be one of shared, per_bit"),
     ({"optimizer_state": "per_bit", "loss_mode": "summed"}, "needs mode joint or hasb with loss_mode per_bit"),
     ({"optimizer_state": "per_bit", "mode": "fixed", "bits": [4]}, "needs mode joint or hasb")],
)
def test_bad_per_bit_step_options(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)
    assert TrainConfig(bit_lr_mult=[0.25, 0.25, 0.5, 1]).bit_lr_mult == [0.25, 0.25, 0.5, 1]
    assert TrainConfig(optimizer_state="per_bit").optimizer_state == "per_bit"


def test_alrs_factors():
    assert alrs_factors([8, 6, 4, 2]) == pytest.approx({8: 1.0, 6: 0.1, 4: 0.01, 2: 0.001})
    assert alrs_factors([4, 3, 2]) == pytest.approx({4: 1.0, 3: 0.5, 2: 0.1})
    assert alrs_factors([8, 6, 4, 2], enabled=False) == {8: 1.0, 6: 1.0, 4: 1.0, 2: 1.0}
    assert alrs_factor(8, 5) == pytest.approx(0.05)


@pytest.mark.parametrize("variant", ["shared", "unshared"])
def test_weight_decay_excluded_from_scales(variant):
    q = bitswitch.quantize(build("digits_cnn"), (8, 6, 4, 2), variant=variant)
    groups = param_groups(q, TrainConfig(weight_decay=1e-3, variant=variant))
    scales = {id(p) for n, p in q.named_parameters() if ".scale" in n}
    by_name = {g["name"]: g for g in groups}
    assert by_name["weights"]["weight_decay"] == 1e-3
    assert all(p.dim() >= 2 and id(p) not in scales for p in by_name["weights"]["params"])
    for g in groups:
        if any(id(p) in scales for p in g["params"]):
            assert g["weight_decay"] == 0.0 and all(id(p) in scales for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(q.parameters()))
    assert by_name["scale_2"]["lr_factor"] == pytest.approx(0.001)


def test_wrong_data_layout_fails_before_training(tmp_path):
    (tmp_path / "fm").mkdir()
    (tmp_path / "fm" / "junk.txt").write_text("not data")
    cfg = TrainConfig(dataset="fashion_mnist", data_root=str(tmp_path / "fm"), out_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="fm"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_unknown_model_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'resnet21'"):
        train(TrainConfig(model="resnet21", out_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_crop_padding_reaches_the_training_loader():
    from bitswitch.train import load_data, make_loader

    base = {"dataset": "digits", "train_subset": 300, "batch_size": 64}
    plain = TrainConfig.from_dict({**base, "augment": False})
    data = load_data(plain)
    batches = lambda cfg: [x for x, _ in make_loader(data, "train", cfg, "cpu", train=True)]  # noqa: E731
    reference = batches(plain)
    no_shift = batches(TrainConfig.from_dict({**base, "augment": True, "crop_padding": 0}))  # digits: no flip, so no change
    shifted = batches(TrainConfig.from_dict({**base, "augment": True, "crop_padding": 2}))
    assert all(torch.equal(a, b) for a, b in zip(reference, no_shift, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(reference, shifted, strict=True))
    with pytest.raises(ValueError, match="crop_padding must be >= 0"):
        TrainConfig.from_dict({**base, "crop_padding": -1})


def test_cutout_reaches_the_training_loader_after_normalisation():
    """cutout erases a square per training image to 0 (the mean once normalised); never the evaluation batches."""
    from bitswitch.train import load_data, make_loader

    base = {"dataset": "digits", "train_subset": 300, "batch_size": 64, "augment": True, "crop_padding": 0}
    data = load_data(TrainConfig.from_dict(base))
    first = lambda cfg, **kw: next(iter(make_loader(data, "train", cfg, "cpu", **kw)))[0]  # noqa: E731
    plain, cut = first(TrainConfig.from_dict(base), train=True), first(TrainConfig.from_dict({**base, "cutout": 3}), train=True)
    erased = (cut != plain)
    assert bool((cut[erased] == 0).all())
    per_image = erased.flatten(1).sum(1)
    assert 0 < int(per_image.min()) and int(per_image.max()) == 9  # at most one 3x3 square (1 channel), clipped at the edges
    evaluation = TrainConfig.from_dict({**base, "cutout": 3})
    assert torch.equal(first(evaluation), first(TrainConfig.from_dict(base)))
    with pytest.raises(ValueError, match="cutout=3 is training augmentation: set augment: true"):
        TrainConfig.from_dict({**base, "augment": False, "cutout": 3})
    with pytest.raises(ValueError, match="cutout must be >= 0"):
        TrainConfig.from_dict({**base, "cutout": -2})


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads ``1e-4`` as text; a config file and a ``key=value`` override both mean the number."""
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-4\nweight_decay: 5E-5\n")
    cfg = TrainConfig.from_file(path)
    assert (cfg.lr, cfg.weight_decay) == (1e-4, 5e-5)
    assert cfg.apply_overrides(["lr=3e-3"]).lr == 3e-3
    for bad in ("fast", "1e-4x", "nan"):
        with pytest.raises(ValueError, match="lr must be of type float"):
            cfg.apply_overrides([f"lr={bad}"])
