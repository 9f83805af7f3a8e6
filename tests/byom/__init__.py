"""Bring-your-own-model matrix: tiny random-init models people actually have, and the stages run on them.

``models`` builds the models (timm, Hugging Face transformers, hand-written modules) with example
inputs and a task; ``stages`` runs one bitswitch stage on one model and returns what it measured.
``tests/test_byom_matrix.py`` asserts every cell, ``benchmarks/byom_matrix.py`` tabulates the same
cells into ``benchmarks/results/byom_matrix.{md,json}`` and ``docs/byom.md``: one implementation.
"""
