"""Bring your own model: every stage on the models people actually have (issue 16, "What it must show").

One test per model x stage, ids like ``timm-convnext_atto-export``. The models (``tests/byom/models.py``)
are random-init toy configurations of timm CNNs and a ViT, Hugging Face GPT-2 / Llama / BERT and
hand-written modules; the stages (``tests/byom/stages.py``) call only the public API. timm imports
torchvision, which has no CPU build here: the ``timm`` fixture puts a test-only import stand-in
(``tests/stubs/torchvision``) on the path. ``benchmarks/byom_matrix.py`` tabulates the same cells.

``EXPECTED_FAILURES`` is the one place that says which cells do not work yet, with the error seen.
The marks are strict: when a feature lands and its cell passes, the cell fails until its entry here
is removed.
"""

from __future__ import annotations

import pytest
from byom.models import CASES
from byom.stages import STAGES

NO_EXAMPLE_INPUTS = "quantize() has no example_inputs= (nor conversion_report): layers matched by exact type, BNs by registration order"
NO_JOINT_STEP = "bitswitch.train has no alrs_param_groups / joint_step: joint training needs a TrainConfig and a built-in model"
COSTS_TAKE_SHAPE = "Hessian traces work, but layer_costs takes an input shape, not example inputs (torch.zeros fails on a tensor)"
SDPA_NO_DOUBLE_BACKWARD = "hessian_traces: derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"
GPT2_CONV1D = "HF Conv1D is not converted: 'every Conv2d/Linear layer is kept in full precision (lm_head); nothing to quantize'"
HF_NOT_FX_TRACEABLE = "torch.fx cannot trace the HF model ('code: co_varnames is too small')"
PTQ_STORES_FP32 = "run_ptq's model saves FP32 weights of every quantized layer beside the codes"
PTQ_NOT_RELOADABLE = "load() cannot reopen the PTQ checkpoint: BN folded and biases added ('checkpoint does not fit the model')"
EXPORT = "export_onnx has no example_inputs= (it takes example=, one tensor, and traces with fx); with example= "
FX_MEAN = EXPORT + "fx fails: 'unsupported tensor method .mean()'"
FX_GETATTR = EXPORT + "fx fails: 'unsupported function builtins.getattr' (timm's x.ndim shape assert)"

#: cell id -> the failure observed on the code the table was last checked against (c7e0892).
EXPECTED_FAILURES: dict[str, str] = {
    "timm-mobilenetv3_small_050-quantize": NO_EXAMPLE_INPUTS,
    "timm-mobilenetv3_small_050-train": NO_JOINT_STEP,
    "timm-mobilenetv3_small_050-search": "hessian_traces: derivative for aten::hardsigmoid_backward is not implemented",
    "timm-mobilenetv3_small_050-ptq": PTQ_STORES_FP32,
    "timm-mobilenetv3_small_050-export": FX_GETATTR,
    "timm-efficientnet_b0-quantize": NO_EXAMPLE_INPUTS,
    "timm-efficientnet_b0-train": NO_JOINT_STEP,
    "timm-efficientnet_b0-search": COSTS_TAKE_SHAPE,
    "timm-efficientnet_b0-ptq": PTQ_STORES_FP32,
    "timm-efficientnet_b0-export": FX_GETATTR,
    "timm-convnext_atto-quantize": NO_EXAMPLE_INPUTS,
    "timm-convnext_atto-train": NO_JOINT_STEP,
    "timm-convnext_atto-search": COSTS_TAKE_SHAPE,
    "timm-convnext_atto-ptq": PTQ_STORES_FP32,
    "timm-convnext_atto-export": EXPORT + "fx fails: 'unsupported tensor method .permute()'",
    "timm-resnet18-quantize": NO_EXAMPLE_INPUTS,
    "timm-resnet18-train": NO_JOINT_STEP,
    "timm-resnet18-search": COSTS_TAKE_SHAPE,
    "timm-resnet18-ptq": PTQ_NOT_RELOADABLE,
    "timm-resnet18-export": EXPORT + "the cell passes",
    "timm-vit_tiny_patch16_224-quantize": NO_EXAMPLE_INPUTS,
    "timm-vit_tiny_patch16_224-train": NO_JOINT_STEP,
    "timm-vit_tiny_patch16_224-search": SDPA_NO_DOUBLE_BACKWARD,
    "timm-vit_tiny_patch16_224-ptq": "run_ptq: 'supports single-input models; this one has 3 inputs' (optional forward arguments)",
    "timm-vit_tiny_patch16_224-export": EXPORT + "'models with more than one input are not supported' (optional forward arguments)",
    "hf-gpt2-quantize": NO_EXAMPLE_INPUTS,
    "hf-gpt2-calibrate": GPT2_CONV1D,
    "hf-gpt2-switch": GPT2_CONV1D,
    "hf-gpt2-saveload": GPT2_CONV1D,
    "hf-gpt2-train": NO_JOINT_STEP,
    "hf-gpt2-search": GPT2_CONV1D,
    "hf-gpt2-ptq": HF_NOT_FX_TRACEABLE,
    "hf-gpt2-export": GPT2_CONV1D,  # then EXPORT
    "hf-llama-quantize": NO_EXAMPLE_INPUTS,
    "hf-llama-train": NO_JOINT_STEP,
    "hf-llama-search": SDPA_NO_DOUBLE_BACKWARD,
    "hf-llama-ptq": HF_NOT_FX_TRACEABLE,
    "hf-llama-export": EXPORT + "fx cannot trace the HF model ('code: co_varnames is too small')",
    "hf-bert-quantize": NO_EXAMPLE_INPUTS,
    "hf-bert-train": NO_JOINT_STEP,
    "hf-bert-search": "hessian_traces calls model(x) on dict inputs: 'dict' object has no attribute 'shape'",
    "hf-bert-ptq": HF_NOT_FX_TRACEABLE,
    "hf-bert-export": EXPORT + "dict inputs fail with 'unhashable type: slice'",
    "custom-bn_before_conv-quantize": NO_EXAMPLE_INPUTS,
    "custom-bn_before_conv-train": NO_JOINT_STEP,
    "custom-bn_before_conv-search": COSTS_TAKE_SHAPE,
    "custom-bn_before_conv-ptq": PTQ_NOT_RELOADABLE,
    "custom-bn_before_conv-export": FX_MEAN,
    "custom-shared_module-quantize": NO_EXAMPLE_INPUTS,
    "custom-shared_module-train": NO_JOINT_STEP,
    "custom-shared_module-search": COSTS_TAKE_SHAPE,
    "custom-shared_module-ptq": PTQ_NOT_RELOADABLE,
    "custom-shared_module-export": FX_MEAN,
    "custom-vgg-quantize": NO_EXAMPLE_INPUTS,
    "custom-vgg-train": NO_JOINT_STEP,
    "custom-vgg-search": COSTS_TAKE_SHAPE,
    "custom-vgg-ptq": PTQ_NOT_RELOADABLE,
    "custom-vgg-export": EXPORT + "a W8 file verified against the model switched to W4 passes the default max_steps=32 (13.2 steps)",
}

CELLS = [
    pytest.param(case, stage, id=f"{case.id}-{stage}",
                 marks=[pytest.mark.xfail(strict=True, reason=EXPECTED_FAILURES[f"{case.id}-{stage}"])] if f"{case.id}-{stage}" in EXPECTED_FAILURES else [])
    for case in CASES for stage in STAGES
]


def test_expected_failures_name_real_cells():
    ids = {f"{case.id}-{stage}" for case in CASES for stage in STAGES}
    assert not set(EXPECTED_FAILURES) - ids, f"unknown cells in EXPECTED_FAILURES: {sorted(set(EXPECTED_FAILURES) - ids)}"


@pytest.mark.parametrize(("case", "stage"), CELLS)
def test_cell(case, stage, request):
    if case.family == "timm":
        request.getfixturevalue("timm")
    if case.family == "hf":
        pytest.importorskip("transformers")
    STAGES[stage](case)
