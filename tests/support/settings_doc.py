"""Writes the settings table generated from the model into docs/operations.md (`make docs`)."""

import re
import sys
from pathlib import Path

from mge.settings import settings_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
_BLOCK = re.compile(r"(<!-- settings:start -->\n).*?(<!-- settings:end -->)", re.DOTALL)


def rendered(text: str) -> str:
    """`text` with the table between the markers replaced by the model's."""
    return _BLOCK.sub(lambda m: m.group(1) + settings_table() + m.group(2), text)


if __name__ == "__main__":
    DOC.write_text(rendered(DOC.read_text()))
    sys.stdout.write(f"wrote the settings table into {DOC}\n")
