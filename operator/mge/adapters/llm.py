"""LLM clients: any OpenAI-compatible chat endpoint over HTTP, and the offline replay of recorded answers."""

import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Final, Protocol

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from mge.acceptance.requirements import parse_requirements
from mge.adapters.manifests import load_plan_input
from mge.adapters.tokenizer import count_tokens
from mge.adapters.tracing import TRACEPARENT_HEADER, span, traceparent
from mge.concurrency.rate_limits import retry_after_s

RETRYABLE_STATUS: Final = frozenset({408, 409, 429, 500, 502, 503, 504})
TRACE_HEADER: Final = "X-MGE-Trace-Id"
ATOM_HEADER: Final = "X-MGE-Atom"
ATTEMPT_HEADER: Final = "X-MGE-Attempt"
# Told of each failed attempt that is about to be retried, as it happens: the caller that holds a
# concurrency slot for the call sets it, so its limiter hears of a 429 during the backoff, not only once a
# retried call has ended (the failures still come back in `Completion.retried_errors` as well).
RETRY_LISTENER: ContextVar[Callable[[str], None] | None] = ContextVar("mge_llm_retry_listener", default=None)
# Told of the headers of every HTTP answer (success or not): the provider's rate-limit headers and Retry-After.
HEADERS_LISTENER: ContextVar[Callable[[Mapping[str, str]], None] | None] = ContextVar(
    "mge_llm_headers_listener", default=None
)
# Awaited right before each HTTP request (first try or retry) is sent: the caller waits there for room the
# provider's rate-limit headers promise, and counts the request as taken from that room.
BEFORE_SEND: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar(
    "mge_llm_before_send", default=None
)


@contextlib.contextmanager
def retries_reported_to(
    listener: Callable[[str], None] | None,
    headers: Callable[[Mapping[str, str]], None] | None = None,
    before_send: Callable[[], Awaitable[None]] | None = None,
) -> Iterator[None]:
    """Within this block, LLM calls tell `listener` of each failed attempt they retry and `headers` of the
    headers of each answer, and await `before_send` before each request."""
    tokens = (RETRY_LISTENER.set(listener), HEADERS_LISTENER.set(headers), BEFORE_SEND.set(before_send))
    try:
        yield
    finally:
        BEFORE_SEND.reset(tokens[2])
        HEADERS_LISTENER.reset(tokens[1])
        RETRY_LISTENER.reset(tokens[0])


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: Sequence[Mapping[str, str]]
    max_tokens: int
    temperature: float = 0.0
    trace_id: str = ""
    atom_id: str = ""
    attempt: int = 1
    masterplan_id: str = ""

    @property
    def rate_limit_tokens(self) -> int:
        """What the call counts against a tokens-per-minute budget: the prompt, estimated the way providers
        do (about 4 characters a token), plus the most it may answer."""
        return self.max_tokens + sum(len(m.get("content", "")) for m in self.messages) // 4


@dataclass(frozen=True, slots=True)
class Completion:
    content: str
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    latency_s: float = 0.0
    # Calls that failed and were retried before this answer: 429/5xx/timeouts seen by the caller.
    retried_errors: tuple[str, ...] = field(default_factory=tuple)
    # Served by our prompt cache: no LLM was called, nothing is spent (tokens are then 0).
    from_cache: bool = False
    # What this answer costs when it is not its tokens at list price: an item's share of a batched call,
    # never more than the item's own worst case (what it reserved).
    cost_usd: Decimal | None = None


class LLMError(RuntimeError):
    """The endpoint refused this request, or answered it unusably; the atom's attempt fails with this message."""


class EndpointUnavailable(LLMError):
    """The endpoint itself is failing (5xx, timeouts, refused connections after every retry, or it refuses our
    key): nothing about the request is wrong, so the atom is handed back untouched and the endpoint's circuit
    counts the failure."""


class LLM(Protocol):
    label: str

    async def complete(self, request: ChatRequest) -> Completion: ...

    async def close(self) -> None: ...


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# A server's Retry-After is honoured up to this many times the backoff cap.
RETRY_AFTER_CAP_FACTOR: Final = 4


def longest_call_s(timeout_s: float, max_attempts: int, backoff_cap_s: float) -> float:
    """The longest one call may take, retries included: every try times out and every pause is the longest."""
    return max_attempts * timeout_s + (max_attempts - 1) * backoff_cap_s * RETRY_AFTER_CAP_FACTOR


# Assumed of a client that does not say (`longest_call_s` attribute): the HTTP client's defaults.
DEFAULT_LONGEST_CALL_S: Final = longest_call_s(120.0, 6, 30.0)


def call_span_s(llm: object) -> float:
    """How long a call through `llm` may take at most, retries included."""
    return float(getattr(llm, "longest_call_s", DEFAULT_LONGEST_CALL_S))


class _BackoffHonouringRetryAfter:
    """Exponential backoff with full jitter, but never shorter than the server's Retry-After."""

    def __init__(self, base: float, cap: float, jitter: "Jitter") -> None:
        self.base, self.cap, self.jitter = base, cap, jitter

    def __call__(self, state: RetryCallState) -> float:
        backoff = min(self.cap, self.base * 2 ** (state.attempt_number - 1)) * self.jitter()
        error = state.outcome.exception() if state.outcome else None
        floor = error.retry_after if isinstance(error, _Retryable) and error.retry_after is not None else 0.0
        return float(max(backoff, min(floor, self.cap * RETRY_AFTER_CAP_FACTOR)))


class Jitter(Protocol):
    def __call__(self) -> float: ...


class OpenAICompatibleLLM:
    """POST {base_url}/chat/completions; retries 408/409/429/5xx/timeouts with backoff; usage from the response."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 120.0,
        max_attempts: int = 6,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        jitter: Jitter | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        import random

        self.label = f"OpenAI-compatible endpoint {base_url}"
        self._url = base_url.rstrip("/") + "/chat/completions"
        # Extra headers (a plan's spec.llm.headers) never replace the key's.
        self._headers = {**(headers or {}), **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10.0)
        self._session: aiohttp.ClientSession | None = None
        self._max_attempts = max_attempts
        self.longest_call_s = longest_call_s(timeout_s, max_attempts, backoff_cap_s)
        # Equal jitter: half the backoff is fixed, half random, so retries spread without collapsing to 0.
        self._wait = _BackoffHonouringRetryAfter(
            backoff_base_s, backoff_cap_s, jitter or (lambda: 0.5 + random.random() / 2)
        )

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop that will use it.
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def cache_identity(self, request: ChatRequest) -> dict[str, object]:
        """What besides the request decides the answer: which endpoint serves the model."""
        return {"endpoint": self._url}

    async def probe(self, timeout_s: float = 5.0) -> str | None:
        """One cheap GET {base_url}/models before a run: None when the endpoint answers and takes the key,
        else what is wrong. Any other answer (404 from a server without the route, 5xx) counts as reachable."""
        url = self._url.removesuffix("/chat/completions") + "/models"
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with (
                aiohttp.ClientSession(headers=self._headers, timeout=timeout) as session,
                session.get(url) as response,
            ):
                status = response.status
        except TimeoutError:
            return f"the LLM endpoint did not answer GET {url} within {timeout_s:.0f}s"
        except aiohttp.ClientError as error:
            return f"cannot reach the LLM endpoint: GET {url}: {error}"
        if status in (401, 403):
            has_key = "Authorization" in self._headers
            key = "a valid key in OPENAI_API_KEY" if has_key else "OPENAI_API_KEY (it is not set)"
            return f"the LLM endpoint refused the request (HTTP {status} on GET {url}): set {key}"
        return None

    async def complete(self, request: ChatRequest) -> Completion:
        seen: list[str] = []
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._max_attempts),
                wait=self._wait,
                retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
                reraise=True,
            ):
                with attempt:
                    hold = BEFORE_SEND.get()
                    if hold is not None:
                        await hold()
                    try:
                        return await self._call_once(request, tuple(seen))
                    except _Retryable as error:
                        seen.append(str(error))
                        listener = RETRY_LISTENER.get()
                        if listener is not None and len(seen) < self._max_attempts:
                            listener(str(error))
                        raise
        except _Retryable as error:
            raise EndpointUnavailable(
                f"LLM endpoint still failing after {self._max_attempts} attempts: {error}"
            ) from error
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _call_once(self, request: ChatRequest, retried: tuple[str, ...]) -> Completion:
        """One HTTP request, as one span (a child of the atom attempt's span) announced in `traceparent`."""
        attributes: dict[str, str | int] = {
            "llm.model": request.model,
            "mge.atom": request.atom_id,
            "mge.attempt": request.attempt,
        }
        with span("llm.chat", request.trace_id, attributes) as call:
            completion = await self._post(request, retried, traceparent(call))
            call.set_attribute("llm.prompt_tokens", completion.prompt_tokens)
            call.set_attribute("llm.completion_tokens", completion.completion_tokens)
            return completion

    async def _post(self, request: ChatRequest, retried: tuple[str, ...], trace_parent: str) -> Completion:
        body = {
            "model": request.model,
            "messages": list(request.messages),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        headers = {
            TRACE_HEADER: request.trace_id,
            TRACEPARENT_HEADER: trace_parent,
            ATOM_HEADER: request.atom_id,
            ATTEMPT_HEADER: str(request.attempt),
        }
        started = time.perf_counter()
        try:
            async with self._client().post(self._url, json=body, headers=headers) as response:
                text = await response.text()
                status, response_headers = response.status, response.headers
        except TimeoutError as error:
            raise _Retryable(f"timeout after {self._timeout.total}s", None) from error
        except aiohttp.ClientError as error:
            raise _Retryable(f"connection error: {error!r}", None) from error
        latency = time.perf_counter() - started
        heard = HEADERS_LISTENER.get()
        if heard is not None:
            heard(response_headers)
        if status in RETRYABLE_STATUS:
            raise _Retryable(
                f"HTTP {status}: {text[:200]}",
                retry_after_s(response_headers.get("Retry-After"), time.time()),
            )
        if status in (401, 403):
            raise EndpointUnavailable(f"LLM endpoint refused our API key: HTTP {status}: {text[:300]}")
        if status >= 400:
            raise LLMError(f"LLM endpoint refused the request: HTTP {status}: {text[:500]}")
        try:
            payload = json.loads(text)
            content = payload["choices"][0]["message"].get("content") or ""
            usage = payload.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
            raise _Retryable(f"malformed response: {error!r}: {text[:200]}", None) from error
        # The call was answered (and is paid for): a usage block we cannot read is the provider's error, not
        # a reason to pay for the same call again.
        try:
            details = usage.get("prompt_tokens_details") or {}
            tokens = (
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
                int(details.get("cached_tokens") or 0),
            )
            if min(tokens) < 0:
                raise ValueError("negative token count")
        except (ValueError, TypeError, AttributeError) as error:
            raise LLMError(
                f"LLM endpoint answered with a malformed `usage` block ({error}): {json.dumps(usage)[:200]}"
            ) from error
        return Completion(
            content=content,
            prompt_tokens=tokens[0],
            completion_tokens=tokens[1],
            cached_prompt_tokens=tokens[2],
            latency_s=latency,
            retried_errors=retried,
        )


class ReplayLLM:
    """Serves an example's recorded answers (responses.jsonl) by atom and attempt; no network, clearly labelled."""

    def __init__(self, recording: Path) -> None:
        self.label = f"REPLAY of recorded responses {recording} (no LLM is called)"
        self._answers: dict[str, dict[int, str]] = {}
        text = recording.read_text()
        self._fingerprint = hashlib.sha256(text.encode()).hexdigest()
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self._answers.setdefault(str(record["atom"]), {})[int(record.get("attempt", 1))] = str(
                    record["content"]
                )
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{recording}:{number}: expected {{atom, attempt, content}}: {error}"
                ) from None

    def cache_identity(self, request: ChatRequest) -> dict[str, object]:
        """A replay answers by atom and attempt from one recording, whatever the prompt: all three are in the key."""
        return {"recording": self._fingerprint, "atom": request.atom_id, "attempt": request.attempt}

    async def complete(self, request: ChatRequest) -> Completion:
        recorded = self._answers.get(request.atom_id)
        if not recorded:
            raise LLMError(f"the recording has no answer for atom {request.atom_id!r}")
        # Later attempts reuse the last recorded one: the recording holds the repairs it needed.
        attempt = max((n for n in recorded if n <= request.attempt), default=min(recorded))
        content = recorded[attempt]
        prompt = sum(count_tokens(m.get("content", "")) for m in request.messages)
        return Completion(content=content, prompt_tokens=prompt, completion_tokens=count_tokens(content))

    async def close(self) -> None:
        return None


class RecordingLLM:
    """Keeps every answer `llm` gives (prompt-cache hits included) as a line of a responses.jsonl that
    ReplayLLM serves later, so a run paid for once can be replayed, shared and debugged for free.

    One line per answer, written and flushed as it arrives: an interrupted run keeps what it paid for, and a
    resumed one appends (a later line for the same atom and attempt wins in the replay).
    """

    def __init__(self, llm: LLM, recording: Path) -> None:
        self.label = llm.label
        self.longest_call_s = call_span_s(llm)
        self._llm = llm
        self._file = recording.open("a", encoding="utf-8")

    async def complete(self, request: ChatRequest) -> Completion:
        completion = await self._llm.complete(request)
        line = {"atom": request.atom_id, "attempt": request.attempt, "content": completion.content}
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._file.flush()
        return completion

    async def close(self) -> None:
        """Closes the recording; the wrapped client is closed by whoever made it."""
        self._file.close()


class ExamplesReplayLLM:
    """Demo mode in a cluster: the recorded answers of every example in a folder, for any plan built from one.

    A request is matched to the example whose atom (by id and description) or requirement (by id and text)
    it asks for, so examples that share atom ids still get their own answers; anything else is an LLMError
    that says demo mode only replays the examples.
    """

    def __init__(self, folder: Path) -> None:
        self.label = (
            f"REPLAY of the recorded responses of the examples in {folder} (demo mode, no LLM is called)"
        )
        # atom id -> (text the prompt carries, the example's replay)
        self._by_atom: dict[str, list[tuple[str, ReplayLLM]]] = {}
        examples = sorted(
            p.parent for p in folder.glob("*/responses.jsonl") if (p.parent / "masterplan.yaml").is_file()
        )
        if not examples:
            raise ValueError(f"{folder}: no example folders with masterplan.yaml and responses.jsonl")
        for example in examples:
            replay = ReplayLLM(example / "responses.jsonl")
            _, spec, atoms = load_plan_input(example)
            for atom in atoms:
                self._by_atom.setdefault(atom.id, []).append((f"Task: {atom.description}", replay))
            for requirement in parse_requirements(spec.requirements).requirements:
                key = f"acceptance/{requirement.id}"
                self._by_atom.setdefault(key, []).append((requirement.text, replay))
        self.examples = tuple(e.name for e in examples)

    def cache_identity(self, request: ChatRequest) -> dict[str, object]:
        replay = self._replay_for(request)
        return replay.cache_identity(request) if replay else {"unmatched": request.atom_id}

    def _replay_for(self, request: ChatRequest) -> ReplayLLM | None:
        prompt = "\n".join(m.get("content", "") for m in request.messages)
        for marker, replay in self._by_atom.get(request.atom_id, []):
            if marker in prompt:
                return replay
        return None

    async def complete(self, request: ChatRequest) -> Completion:
        replay = self._replay_for(request)
        if replay is None:
            raise LLMError(
                f"demo mode replays the recorded answers of the examples ({', '.join(self.examples)}) only, "
                f"and atom {request.atom_id!r} is not one of theirs: apply an example unchanged, or install "
                "without demo.enabled and give the executors an LLM endpoint (llm.existingSecret)"
            )
        return await replay.complete(request)

    async def close(self) -> None:
        return None
