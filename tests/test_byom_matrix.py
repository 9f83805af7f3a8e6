"""Bring your own model: every stage on the models people actually have (issue 16, "What it must show").

One test per model x stage, ids like ``timm-convnext_atto-export``. The models (``tests/byom/models.py``)
are random-init toy configurations of timm CNNs and a ViT, Hugging Face GPT-2 / Llama / BERT and
hand-written modules; the stages (``tests/byom/stages.py``) call only the public API. timm imports
torchvision, which has no CPU build here: the ``timm`` fixture puts a test-only import stand-in
(``tests/stubs/torchvision``) on the path. ``benchmarks/byom_matrix.py`` tabulates the same cells.

``EXPECTED_FAILURES`` is the one place that says which cells do not work yet, with the error seen.
The marks are strict: when a feature lands and its cell passes, the cell fails until its entry here
is removed. A failure that hinges on a float tie, which falls either way with the CPU's kernels, is in
``CPU_DEPENDENT`` too and not strict.
"""

from __future__ import annotations

import pytest
from byom.models import CASES
from byom.stages import STAGES

SE_EXPORT = ("W8 export with snap_bias: 3.24 output steps (limit 2), top-1 100 %; every layer's input codes match "
             "onnxruntime's except one float-noise tie in blocks.4.1.conv_dw's input (after the float hard-swish), which the "
             "net amplifies (AVX2 CPUs; on an AVX-512 CPU the tie falls the other way and the cell passes)")

#: cell id -> the failure observed on the code the table was last checked against.
EXPECTED_FAILURES: dict[str, str] = {
    "timm-mobilenetv3_small_050-export": SE_EXPORT,
}
#: expected failures that pass on some CPUs (the kernels' summation order decides a tie)
CPU_DEPENDENT = {"timm-mobilenetv3_small_050-export"}


def _marks(cell: str) -> list[pytest.MarkDecorator]:
    if cell not in EXPECTED_FAILURES:
        return []
    return [pytest.mark.xfail(strict=cell not in CPU_DEPENDENT, reason=EXPECTED_FAILURES[cell])]


CELLS = [pytest.param(case, stage, id=f"{case.id}-{stage}", marks=_marks(f"{case.id}-{stage}")) for case in CASES for stage in STAGES]


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
