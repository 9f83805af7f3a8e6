"""YAML for configs, strict: no aliases, no duplicate keys, a size cap.

``yaml.safe_load`` already refuses code execution, but a few hundred bytes of nested aliases expand
to gigabytes before any validation runs, and a repeated key silently keeps the last value. Configs
need neither.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_BYTES = 1 << 20


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(None, None, f"YAML aliases (*{event.anchor}) are not allowed in configs", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str, where: str) -> Any:
    """Parse ``text``; ``ValueError`` naming ``where`` for anything refused."""
    if len(text) > MAX_BYTES:
        raise ValueError(f"{where}: {len(text)} characters of YAML; configs are limited to {MAX_BYTES}")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: not valid YAML ({' '.join(str(e).split())})") from None


__all__ = ["load_yaml"]
