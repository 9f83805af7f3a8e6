"""Bridges to other training frameworks; each module imports its framework only when imported itself.

* :mod:`bitswitch.integrations.hf`: :class:`~bitswitch.integrations.hf.BitSwitchTrainer`, a
  Hugging Face ``transformers.Trainer`` that trains every bit-width of a quantized model jointly.
"""
