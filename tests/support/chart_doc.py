"""Writes the values table of helm/mge-operator/README.md from values.schema.json and values.yaml (`make docs`)."""

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "mge-operator"
README = CHART / "README.md"
_BLOCK = re.compile(r"(<!-- values:start -->\n).*?(<!-- values:end -->)", re.DOTALL)
_MISSING = object()


def leaves(schema: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted key, schema) of every value a user sets: properties without sub-properties, in schema order."""
    for name, node in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        pattern = node.get("additionalProperties")
        if "properties" in node:
            yield from leaves(node, f"{key}.")
        elif isinstance(pattern, dict) and "properties" in pattern:
            yield from leaves(pattern, f"{key}.<name>.")
        else:
            yield key, node


def _default(values: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(values, dict) or part not in values:
            return _MISSING
        values = values[part]
    return values


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def values_table() -> str:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for key, node in leaves(schema):
        kind = node.get("type", "object")
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        if "enum" in node:
            kind = " / ".join(str(choice) for choice in node["enum"])
        default = _default(values, key)
        shown = "" if default is _MISSING else f"`{json.dumps(default)}`"
        rows.append(f"| `{key}` | {_cell(kind)} | {_cell(shown)} | {_cell(node.get('description', ''))} |")
    return "\n".join(rows) + "\n"


def rendered(text: str) -> str:
    """`text` with the table between the markers replaced by the one generated from the schema."""
    return _BLOCK.sub(lambda m: m.group(1) + values_table() + m.group(2), text)


if __name__ == "__main__":
    README.write_text(rendered(README.read_text()))
    sys.stdout.write(f"wrote the values table into {README}\n")
