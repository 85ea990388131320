"""Python ground truth: the imports the interpreter really executes when every project module is imported."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mge.adapters.sandbox import Sandbox, SandboxLimits

RESULT_FILE: Final = ".mge-import-trace.json"

# Runs inside the sandbox, in a copy of the project: wraps __import__ and importlib.import_module, imports
# every module (tests included; __main__.py and setup.py are programs, not modules), and writes which
# project file executed an import of which project file. Only module-level code runs, so imports in
# function bodies are not seen, as documented.
TRACE_SCRIPT: Final = r"""
import builtins, importlib, importlib.util, json, os, sys
root = os.path.realpath(os.getcwd())
skip = {"node_modules", ".git", "__pycache__", ".venv", "venv", ".mge"}
src_root = os.path.isdir("src") and not os.path.exists("src/__init__.py")
sys.path[:0] = [root] + ([os.path.join(root, "src")] if src_root else [])
modules = []
for directory, folders, names in os.walk(root):
    folders[:] = sorted(f for f in folders if f not in skip)
    for name in sorted(names):
        if not name.endswith(".py") or name in ("__main__.py", "setup.py"):
            continue
        parts = os.path.relpath(os.path.join(directory, name), root)[:-3].split(os.sep)
        if src_root and parts[0] == "src":
            parts = parts[1:]
        if parts and parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and all(p.isidentifier() for p in parts):
            modules.append(".".join(parts))

def project_file(path):
    if not path:
        return None
    path = os.path.realpath(path)
    return os.path.relpath(path, root).replace(os.sep, "/") if path.startswith(root + os.sep) else None

def file_of(name):
    return project_file(getattr(sys.modules.get(name), "__file__", None))

edges = set()

def record(importer, names):
    source = project_file(importer)
    if source is None:
        return
    for name in names:
        target = file_of(name)
        if target is not None and target != source:
            edges.add((source, target))

real_import = builtins.__import__

def traced_import(name, globals=None, locals=None, fromlist=(), level=0):
    module = real_import(name, globals, locals, fromlist, level)
    scope = globals or {}
    try:
        absolute = importlib.util.resolve_name("." * level + name, scope.get("__package__") or "") if level else name
    except (ImportError, ValueError):
        return module
    wanted = [n for n in (fromlist or ()) if n != "*"]
    submodules = [f"{absolute}.{n}" for n in wanted if f"{absolute}.{n}" in sys.modules]
    # `from pkg import a, b`: pkg itself is needed unless every name is a submodule (then it only runs first).
    own = [absolute] if not wanted or len(submodules) < len(wanted) else []
    record(scope.get("__file__"), own + submodules)
    return module

real_import_module = importlib.import_module

def traced_import_module(name, package=None):
    module = real_import_module(name, package)
    caller = sys._getframe(1).f_globals.get("__file__")
    record(caller, [importlib.util.resolve_name(name, package) if name.startswith(".") else name])
    return module

builtins.__import__ = traced_import
importlib.import_module = traced_import_module
failed = {}
for name in modules:
    try:
        real_import_module(name)
    except BaseException as error:
        failed[name] = f"{type(error).__name__}: {error}"[:300]
loaded = sorted({f for f in (file_of(n) for n in modules) if f is not None})
with open(os.path.join(root, ".mge-import-trace.json"), "w", encoding="utf-8") as out:
    json.dump({"loaded": loaded, "edges": sorted(edges), "failed": failed}, out)
"""


class TraceFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class PythonTrace:
    loaded: set[str]  # project files whose module imported without error: the sources that are judged
    edges: set[tuple[str, str]]  # (importing file, imported file) the interpreter executed, from loaded files
    failed: dict[str, str]  # module -> why it could not be imported


async def trace_python_imports(root: Path, timeout_s: float = 120.0) -> PythonTrace:
    """Import every module of the project in the sandbox (no network, own uid) and record its imports."""
    sandbox = Sandbox(SandboxLimits(timeout_s=timeout_s, cpu_s=int(timeout_s)), workers=1)
    written, output = await sandbox.run_python(
        root, TRACE_SCRIPT, result_file=RESULT_FILE, timeout_s=timeout_s
    )
    if written is None:
        raise TraceFailed(f"the import trace did not finish: {output.strip()[-500:] or 'no output'}")
    report = json.loads(written)
    loaded = set(report["loaded"])
    return PythonTrace(
        loaded=loaded,
        # A module that failed part-way ran some imports; it is not judged, so neither are they.
        edges={(source, target) for source, target in report["edges"] if source in loaded},
        failed=dict(report["failed"]),
    )
