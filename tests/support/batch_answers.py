"""A fake-LLM responder that answers batched requests the way a cooperative model would, from recordings."""

import json
from collections.abc import Callable
from typing import Any

from mge.adapters.llm import ChatRequest
from mge.adapters.llm_cache import BATCH_ATOM_PREFIX
from mge.generation.prompt import SYSTEM_PROMPT


def batch_responder(
    recordings: dict[str, dict[int, str]], *, drop: set[str] | None = None, garble: bool = False
) -> Callable[[dict[str, Any], str, int], str]:
    """Answers {"answers": [{id, content}]} with each task's recorded first answer; `drop` leaves ids out,
    `garble` answers with text that is not the requested JSON."""

    def respond(body: dict[str, Any], atom: str, attempt: int) -> str:
        if not atom.startswith(BATCH_ATOM_PREFIX):
            return "```python\nVALUE = 1\n```"
        if garble:
            return "RESPONSE 1: sorry, here is everything in one block"
        tasks = json.loads(body["messages"][-1]["content"])
        answers = [
            {"id": t["id"], "content": recordings[t["id"]][min(recordings[t["id"]])]}
            for t in tasks
            if t["id"] not in (drop or set())
        ]
        return json.dumps({"answers": answers})

    return respond


def batchable_request(atom: str, attempt: int = 1, temperature: float = 0.0) -> ChatRequest:
    """A small temperature-0 atom request of the kind the batcher groups."""
    return ChatRequest(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Write `{atom}.py`."},
        ],
        max_tokens=256,
        temperature=temperature,
        trace_id="00000000-0000-4000-8000-0000000000b1",
        atom_id=atom,
        attempt=attempt,
    )
