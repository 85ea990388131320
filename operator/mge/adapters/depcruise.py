"""dependency-cruiser as a second opinion on a project's file edges (`mge deps validate --cruiser`)."""

import json
import subprocess
from pathlib import Path

from mge.adapters.typescript import TypeScriptUnavailable, node_modules_path

EXCLUDED = r"(^|/)(node_modules|\.git|\.mge|\.venv|venv|__pycache__)/"
TIMEOUT_S = 600.0


def cruiser_edges(root: Path, sources: str = ".") -> set[tuple[str, str]]:
    """(source, target) project files dependency-cruiser resolves, with TypeScript pre-compilation deps.

    Type-only imports count (`--ts-pre-compilation-deps`), as they do for tsc and for us; edges into
    packages, Node built-ins and what it could not resolve are left out.
    """
    script = node_modules_path() / "dependency-cruiser" / "bin" / "dependency-cruise.mjs"
    if not script.exists():
        raise TypeScriptUnavailable(f"dependency-cruiser is not installed at {script}: run `make setup`")
    args = ["node", str(script), "--no-config", "--ts-pre-compilation-deps", "--output-type", "json"]
    if (root / "tsconfig.json").exists():
        args += ["--ts-config", "tsconfig.json"]
    args += ["--exclude", EXCLUDED, sources]
    try:
        completed = subprocess.run(
            args, cwd=root, capture_output=True, text=True, check=False, timeout=TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TypeScriptUnavailable(f"dependency-cruiser could not run: {error}") from error
    # Exit 1 means "rule violations found"; with --no-config there are none, but it is not a failure.
    if completed.returncode not in (0, 1) or not completed.stdout.strip():
        raise TypeScriptUnavailable(f"dependency-cruiser failed: {completed.stderr.strip()[-1000:]}")
    modules = json.loads(completed.stdout)["modules"]
    return {
        (module["source"], dependency["resolved"])
        for module in modules
        for dependency in module["dependencies"]
        if not dependency["couldNotResolve"]
        and not dependency["coreModule"]
        and "node_modules/" not in dependency["resolved"]
    }
