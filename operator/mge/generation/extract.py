"""Pulls the generated file out of a chat answer: the (largest) fenced code block, or the bare answer."""

import re
from typing import Final

_FENCE: Final = re.compile(r"```[ \t]*([A-Za-z0-9_+\-.]*)[^\n]*\n(.*?)(?:\n```|```)", re.DOTALL)


class NoCodeInAnswer(ValueError):
    pass


def extract_code(answer: str) -> str:
    """The code the model wrote; raises NoCodeInAnswer for empty or prose-only answers."""
    blocks: list[str] = [body for _, body in _FENCE.findall(answer)]
    if blocks:
        code = max(blocks, key=len)
    elif "```" not in answer and _looks_like_code(answer):
        code = answer
    else:
        code = ""
    code = code.strip("\n")
    if not code.strip():
        raise NoCodeInAnswer("the answer contains no code block; answer with the complete file in ``` fences")
    return code + "\n"


def _looks_like_code(text: str) -> bool:
    markers = ("def ", "class ", "import ", "from ", "export ", "const ", "function ", "interface ", "type ")
    return any(line.lstrip().startswith(markers) for line in text.splitlines())
