"""What a local run needs installed besides the package: checked before it starts, each gap with its fix."""

import importlib.util
import os
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Final

from mge.adapters.typescript import DEFAULT_NODE_MODULES

SCRIPT_LANGUAGES: Final = frozenset({"typescript", "javascript"})
# What a run needs of the npm packages `make setup` installs (the rest is for benchmarks).
_NPM_PACKAGES: Final = (
    "typescript@5.9.3 jest@29.7.0 @swc/core@1.7.26 @swc/jest@0.2.36 @types/node@20.11.30 @types/jest@29.5.14"
)


def missing_tools(
    languages: Collection[str],
    *,
    acceptance_tests: bool,
    find_module: Callable[[str], object | None] = importlib.util.find_spec,
    which: Callable[[str], str | None] = shutil.which,
    node_modules: Path | None = None,
) -> list[str]:
    """Each tool the plan's atoms (`languages`) and, with `acceptance_tests`, its tests need and do not find."""
    modules = node_modules or Path(os.environ.get("MGE_NODE_MODULES") or DEFAULT_NODE_MODULES)
    missing = []
    if acceptance_tests and "python" in languages and find_module("pytest") is None:
        missing.append("pytest, which runs the Python acceptance tests: pip install 'mge-operator[local]'")
    if SCRIPT_LANGUAGES & set(languages):
        if which("node") is None:
            missing.append("Node.js 18 or newer (`node` on PATH), which checks TypeScript/JavaScript atoms")
        needed = ("typescript", "jest", "@swc/jest") if acceptance_tests else ("typescript",)
        absent = [package for package in needed if not (modules / package / "package.json").exists()]
        if absent:
            missing.append(
                f"{', '.join(absent)} in {modules} (TypeScript validates the atoms, Jest runs their acceptance "
                f"tests): npm install --prefix {modules.parent} {_NPM_PACKAGES}, or `make setup` in a checkout"
            )
    return missing
