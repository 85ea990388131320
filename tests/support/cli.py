"""Runs the `mge` command as users do: a real process, its output as one line of words for matching."""

import asyncio
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


async def run_mge(*args: str, cwd: Path | None = None, timeout_s: float = 180, **env: str) -> tuple[int, str]:
    """(exit code, stdout+stderr with whitespace collapsed) of `mge ARGS`; async so a fake server can answer."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mge.cli",
        *args,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "160", "PYTHONPATH": str(REPO / "operator"), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, " ".join(output.decode().split())
