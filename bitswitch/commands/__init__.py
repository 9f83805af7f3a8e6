"""Sub-commands of the ``bitswitch`` CLI: one module each, discovered automatically."""
