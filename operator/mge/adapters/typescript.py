"""TypeScript/JavaScript syntax checks through one long-lived Node process running the TypeScript compiler."""

import asyncio
import json
import os
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Final

# `make setup` and the image install typescript here, next to the Python environment.
DEFAULT_NODE_MODULES: Final = Path(sys.prefix) / "node" / "node_modules"


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


class TypeScriptChecker:
    """Starts on first use; requests are serialised (the checker answers in order)."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
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

    async def check(self, file: str, code: str) -> list[str]:
        """Syntax errors as `file:line:col: TSnnnn: message`; empty when the code parses."""
        async with self._lock:
            if self._process is None or self._process.returncode is not None:
                self._process = await self._start()
            assert self._process.stdin is not None
            assert self._process.stdout is not None
            self._next_id += 1
            request = {"id": self._next_id, "file": file, "code": code}
            self._process.stdin.write((json.dumps(request) + "\n").encode())
            await self._process.stdin.drain()
            line = await self._process.stdout.readline()
            if not line:
                self._process = None
                raise TypeScriptUnavailable("the TypeScript checker process exited; see its stderr")
            answer = json.loads(line)
            return [str(error) for error in answer["errors"]]

    async def close(self) -> None:
        if self._process is not None and self._process.returncode is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            await self._process.wait()
        self._process = None
