"""An OpenAI-compatible chat server for tests and benchmarks: recorded answers, latency, capacity, faults.

Real HTTP on 127.0.0.1; clients talk to it exactly as to OpenAI/vLLM. It stands in for a real model,
which cannot run here.
"""

import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from mge.adapters.tokenizer import count_tokens
from mge.cache.similarity import embed

Responder = Callable[[dict[str, Any], str, int], str]


@dataclass
class Fault:
    """One injected failure: an HTTP status, 'timeout' (hang past the client timeout), 'garbage' (200, no JSON)
    or 'bad_usage' (200, a real answer whose `usage` block is not numbers)."""

    kind: int | str
    retry_after: float | None = None


@dataclass
class FakeLLMConfig:
    base_latency_s: float = 0.0
    latency_jitter_s: float = 0.0
    per_token_s: float = 0.0
    # Above `capacity` concurrent requests latency grows proportionally; above `reject_factor` x capacity: 429.
    capacity: int | None = None
    reject_factor: float = 1.5
    hang_s: float = 30.0
    # Extra latency for the calls of one atom ("acceptance/MUST-3"): holds one call while the others answer.
    atom_latency_s: dict[str, float] = field(default_factory=dict)
    # Rate limits as OpenAI applies them: buckets refilled continuously over `minute_s` (scaled down in tests),
    # a request takes 1 request and max_tokens + prompt characters / 4 tokens; past either, 429 with
    # Retry-After. Every answer carries x-ratelimit-{limit,remaining,reset}-{requests,tokens}.
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    minute_s: float = 60.0
    # This share of requests fails at random (seeded) with one of `fault_statuses`, as providers do now and then.
    fault_rate: float = 0.0
    fault_statuses: tuple[int, ...] = (429, 500, 502, 503)
    # A provider account: a request without `Authorization: Bearer <api_key>` is refused with 401.
    api_key: str | None = None


@dataclass
class FakeLLMStats:
    requests: int = 0
    completed: int = 0
    rejected: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    # Of `rejected`: refused for the requests- or tokens-per-minute budget.
    rate_limited: int = 0
    # time.monotonic() of each chat request's arrival, and of each answered with 429.
    arrivals: list[float] = field(default_factory=list)
    refusals_429: list[float] = field(default_factory=list)
    calls_per_atom: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    trace_ids: set[str] = field(default_factory=set)
    traceparents: list[str] = field(default_factory=list)
    # The Authorization header and the atom of every chat request, as received.
    authorizations: Counter[str] = field(default_factory=Counter)
    atoms_seen: set[str] = field(default_factory=set)
    # /embeddings: requests and texts embedded.
    embedding_requests: int = 0
    embedded_texts: int = 0
    # The chat messages of every request, in arrival order (to check what a prompt carried).
    prompts: list[tuple[str, str]] = field(default_factory=list)
    # Every request's headers (chat requests), to check that a plan's spec.llm.headers arrive.
    request_headers: list[dict[str, str]] = field(default_factory=list)


def _truncated(content: str, max_tokens: int | None) -> str:
    """Like a provider, the answer stops at `max_tokens` (a batch answer cut short is no longer JSON)."""
    if not max_tokens or count_tokens(content) <= max_tokens:
        return content
    low, high = 0, len(content)
    while low < high:  # the longest prefix within max_tokens
        middle = (low + high + 1) // 2
        if count_tokens(content[:middle]) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return content[:low]


class _Bucket:
    """A budget refilled continuously to `size` over `period_s`."""

    def __init__(self, size: int, period_s: float) -> None:
        self.size, self.rate = size, size / period_s
        self.level, self.at = float(size), time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.size, self.level + (now - self.at) * self.rate)
        self.at = now

    def shortfall_s(self, cost: float) -> float:
        """0 if `cost` fits now, else seconds until it will."""
        self._refill()
        return 0.0 if self.level >= cost else (cost - self.level) / self.rate

    def take(self, cost: float) -> None:
        self.level -= cost

    def headers(self, kind: str) -> dict[str, str]:
        self._refill()
        return {
            f"x-ratelimit-limit-{kind}": str(self.size),
            f"x-ratelimit-remaining-{kind}": str(int(self.level)),
            f"x-ratelimit-reset-{kind}": f"{int((self.size - self.level) / self.rate * 1000)}ms",
        }


class FakeLLM:
    def __init__(self, config: FakeLLMConfig | None = None, responder: Responder | None = None) -> None:
        self.config = config or FakeLLMConfig()
        self.recordings: dict[str, dict[int, str]] = {}
        self.responder = responder
        self.faults: deque[Fault] = deque()
        # An outage: while set, every chat request gets this HTTP status (503: the provider is down).
        self.down_with: int | None = None
        self.stats = FakeLLMStats()
        self._runner: web.AppRunner | None = None
        self._random = random.Random(7)
        self.url = ""
        self._buckets: dict[str, _Bucket] = {}
        if self.config.requests_per_minute:
            self._buckets["requests"] = _Bucket(self.config.requests_per_minute, self.config.minute_s)
        if self.config.tokens_per_minute:
            self._buckets["tokens"] = _Bucket(self.config.tokens_per_minute, self.config.minute_s)

    def _rate_limit_headers(self) -> dict[str, str]:
        return {name: value for kind, b in self._buckets.items() for name, value in b.headers(kind).items()}

    def _over_rate_limit(self, body: dict[str, Any]) -> web.StreamResponse | None:
        """A 429 with Retry-After when the request does not fit the buckets; else it takes its share of them."""
        prompt = sum(len(m.get("content", "")) for m in body.get("messages", []))
        costs = {"requests": 1.0, "tokens": float(int(body.get("max_tokens") or 0) + prompt // 4)}
        wait = max((b.shortfall_s(costs[kind]) for kind, b in self._buckets.items()), default=0.0)
        if wait > 0:
            self.stats.rejected += 1
            self.stats.rate_limited += 1
            self.stats.refusals_429.append(time.monotonic())
            return web.json_response(
                {"error": {"message": "Rate limit reached", "type": "requests"}},
                status=429,
                headers={**self._rate_limit_headers(), "Retry-After": f"{wait:.3f}"},
            )
        for kind, bucket in self._buckets.items():
            bucket.take(costs[kind])
        return None

    def load_recording(self, path: Path) -> None:
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                self.recordings.setdefault(record["atom"], {})[int(record.get("attempt", 1))] = record[
                    "content"
                ]

    def inject(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _answer(self, body: dict[str, Any], atom: str, attempt: int) -> str:
        recorded = self.recordings.get(atom)
        if recorded:
            return recorded[max((n for n in recorded if n <= attempt), default=min(recorded))]
        if self.responder is not None:
            return self.responder(body, atom, attempt)
        return "```python\nVALUE = 1\n```"

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's /embeddings shape; vectors from hashed character n-grams (deterministic, 256 dimensions)."""
        stats = self.stats
        stats.authorizations[request.headers.get("Authorization", "")] += 1
        if (
            self.config.api_key is not None
            and request.headers.get("Authorization") != f"Bearer {self.config.api_key}"
        ):
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        body = await request.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        stats.embedding_requests += 1
        stats.embedded_texts += len(texts)
        tokens = sum(max(1, len(t) // 4) for t in texts)
        data = [{"object": "embedding", "index": i, "embedding": embed(t, 256)} for i, t in enumerate(texts)]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        stats, config = self.stats, self.config
        stats.requests += 1
        stats.arrivals.append(time.monotonic())
        stats.trace_ids.add(request.headers.get("X-MGE-Trace-Id", ""))
        stats.traceparents.append(request.headers.get("traceparent", ""))
        atom = request.headers.get("X-MGE-Atom", "")
        attempt = int(request.headers.get("X-MGE-Attempt", "1"))
        stats.calls_per_atom[atom] += 1
        stats.authorizations[request.headers.get("Authorization", "")] += 1
        stats.atoms_seen.add(atom)
        stats.request_headers.append(dict(request.headers))
        if config.api_key is not None and request.headers.get("Authorization") != f"Bearer {config.api_key}":
            stats.rejected += 1
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        if self.down_with is not None:
            stats.rejected += 1
            return web.json_response({"error": {"message": "service unavailable"}}, status=self.down_with)
        bad_usage = False
        if self.faults:
            fault = self.faults.popleft()
            bad_usage = fault.kind == "bad_usage"
            if fault.kind == "timeout":
                await asyncio.sleep(config.hang_s)
            if fault.kind == "garbage":
                return web.Response(text="<html>upstream error</html>", content_type="text/html")
            if isinstance(fault.kind, int):
                if fault.kind == 429:
                    stats.refusals_429.append(time.monotonic())
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                return web.json_response(
                    {"error": {"message": "injected"}}, status=fault.kind, headers=headers
                )
        if config.fault_rate and self._random.random() < config.fault_rate:
            status = self._random.choice(config.fault_statuses)
            stats.rejected += 1
            if status == 429:
                stats.refusals_429.append(time.monotonic())
            headers = {"Retry-After": "0.2"} if status == 429 else {}
            return web.json_response({"error": {"message": "sporadic"}}, status=status, headers=headers)
        if config.capacity and stats.in_flight >= config.capacity * config.reject_factor:
            stats.rejected += 1
            return web.json_response(
                {"error": {"message": "rate limited"}}, status=429, headers={"Retry-After": "0.1"}
            )
        body = await request.json()
        stats.prompts.append((atom, "\n".join(str(m.get("content", "")) for m in body.get("messages", []))))
        if self._buckets and (refused := self._over_rate_limit(body)) is not None:
            return refused
        # As a provider reports them: what its budgets had left when it admitted the request, not at the answer.
        rate_limit_headers = self._rate_limit_headers()
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            content = _truncated(self._answer(body, atom, attempt), body.get("max_tokens"))
            completion_tokens = count_tokens(content)
            latency = config.base_latency_s + self._random.random() * config.latency_jitter_s
            latency += config.atom_latency_s.get(atom, 0.0)
            latency += completion_tokens * config.per_token_s
            if config.capacity and stats.in_flight > config.capacity:
                latency *= stats.in_flight / config.capacity
            if latency:
                await asyncio.sleep(latency)
            stats.latencies_s.append(latency)
        finally:
            stats.in_flight -= 1
        stats.completed += 1
        prompt_tokens = sum(count_tokens(m.get("content", "")) for m in body.get("messages", []))
        return web.json_response(
            {
                "id": f"chatcmpl-{stats.requests}",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": "many" if bad_usage else prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
            headers=rate_limit_headers,
        )


@contextlib.asynccontextmanager
async def fake_llm_process(base_latency_s: float) -> AsyncIterator[str]:
    """A FakeLLM in a process of its own, as a real provider is: a burst of its answers is not handled on the
    caller's event loop, where it would add to the latency the caller's limiters measure. Yields its URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.fake_llm",
        str(base_latency_s),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        url = (await process.stdout.readline()).decode().strip()
        if not url:
            raise RuntimeError(f"the fake LLM process ended before serving (exit {await process.wait()})")
        yield url
    finally:
        process.stdin.close()  # it serves until its stdin closes
        await process.wait()


async def _serve_until_stdin_closes(base_latency_s: float) -> None:
    server = FakeLLM(FakeLLMConfig(base_latency_s=base_latency_s))
    print(await server.start(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()


if __name__ == "__main__":
    asyncio.run(_serve_until_stdin_closes(float(sys.argv[1])))
