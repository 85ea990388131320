"""TypeScript/JavaScript syntax checks through one long-lived Node process running the TypeScript compiler."""

import asyncio
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Final

# `make setup` and the image install typescript here, next to the Python environment.
DEFAULT_NODE_MODULES: Final = Path(sys.prefix) / "node" / "node_modules"


# Far above any syntax check of a generated file (milliseconds): only a stuck checker takes this long.
CHECK_TIMEOUT_S: Final = 60.0


class TypeScriptUnavailable(RuntimeError):
    pass


def node_modules_path() -> Path:
    configured = os.environ.get("MGE_NODE_MODULES")
    path = Path(configured) if configured else DEFAULT_NODE_MODULES
    if not (path / "typescript" / "package.json").exists():
        raise TypeScriptUnavailable(
            f"TypeScript compiler not found in {path}: run `make setup` "
            f"(npm install --prefix {path.parent} typescript@5.9.3) or set MGE_NODE_MODULES"
        )
    return path


@dataclass
class _Checker:
    """One Node process, the checks it still owes an answer (by request id), and the task reading answers."""

    process: asyncio.subprocess.Process
    pending: dict[int, asyncio.Future[list[str]]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    alive: bool = True


class TypeScriptChecker:
    """Starts on first use; answers are matched to their requests by id, so a check that is cancelled (or
    times out) leaves nothing behind that a later check could take for its own."""

    def __init__(self) -> None:
        self._checker: _Checker | None = None
        self._lock = asyncio.Lock()  # one start at a time, and whole request lines
        self._next_id = 0

    async def _start(self) -> asyncio.subprocess.Process:
        node = shutil.which("node")
        if node is None:
            raise TypeScriptUnavailable(
                "`node` is not on PATH; install Node.js 18+ to validate TypeScript atoms"
            )
        script = resources.files("mge.adapters") / "ts_syntax.js"
        return await asyncio.create_subprocess_exec(
            node,
            str(script),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_PATH": str(node_modules_path())},
            limit=16 * 1024 * 1024,
        )

    async def _running(self) -> _Checker:
        if self._checker is None or not self._checker.alive or self._checker.process.returncode is not None:
            checker = _Checker(await self._start())
            checker.reader = asyncio.create_task(self._read(checker))
            self._checker = checker
        return self._checker

    async def _read(self, checker: _Checker) -> None:
        """Hand each answer to the check waiting for its id; when the process ends, fail every check left."""
        assert checker.process.stdout is not None
        why = "the TypeScript checker process exited; see its stderr"
        try:
            while line := await checker.process.stdout.readline():
                answer = json.loads(line)
                waiting = checker.pending.pop(answer.get("id"), None)
                if waiting is None or waiting.done():
                    continue  # its check was cancelled: the answer is dropped, no other check is shifted
                if "failure" in answer:
                    waiting.set_exception(
                        TypeScriptUnavailable(f"the TypeScript checker failed: {answer['failure']}")
                    )
                else:
                    waiting.set_result([str(error) for error in answer["errors"]])
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            why = f"the TypeScript checker answered something unreadable: {error!r}"
            if checker.process.returncode is None:
                checker.process.kill()
        finally:
            checker.alive = False
            for waiting in checker.pending.values():
                if not waiting.done():
                    waiting.set_exception(TypeScriptUnavailable(why))
            checker.pending.clear()

    async def check(self, file: str, code: str) -> list[str]:
        """Syntax errors as `file:line:col: TSnnnn: message`; empty when the code parses."""
        answer: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        async with self._lock:
            checker = await self._running()
            assert checker.process.stdin is not None
            self._next_id += 1
            request_id = self._next_id
            checker.pending[request_id] = answer
            try:
                request = {"id": request_id, "file": file, "code": code}
                checker.process.stdin.write((json.dumps(request) + "\n").encode())
                await checker.process.stdin.drain()
            except BaseException as error:
                checker.pending.pop(request_id, None)
                if isinstance(error, BrokenPipeError | ConnectionResetError):
                    raise TypeScriptUnavailable(
                        "the TypeScript checker process exited; see its stderr"
                    ) from error
                raise
        try:
            return await asyncio.wait_for(answer, CHECK_TIMEOUT_S)
        except TimeoutError:
            # A checker stuck on one file would hold every later check: start afresh with the next one.
            if checker.process.returncode is None:
                checker.process.kill()
            raise TypeScriptUnavailable(
                f"the TypeScript checker gave no answer for {file} within {CHECK_TIMEOUT_S:.0f}s"
            ) from None
        finally:
            checker.pending.pop(request_id, None)

    async def close(self) -> None:
        checker, self._checker = self._checker, None
        if checker is None:
            return
        if checker.process.returncode is None:
            assert checker.process.stdin is not None
            checker.process.stdin.close()
            await checker.process.wait()
        if checker.reader is not None:
            await checker.reader
