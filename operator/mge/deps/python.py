"""Python import analysis with `ast`: import/from (relative and absolute), importlib, package re-exports."""

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from mge.deps.graph import DependencyGraph, Edge, EdgeKind, Unresolved

# How deep a name is followed through `__init__` re-exports before giving up (cycles end earlier).
MAX_REEXPORT_DEPTH = 16


@dataclass(frozen=True)
class _Import:
    module: str  # absolute dotted name, already resolved from relative form
    names: tuple[str, ...]  # imported names for `from m import a, b`; empty for `import m`
    line: int
    kind: EdgeKind
    specifier: str
    deferred: bool = False  # inside a function body


@dataclass
class _ModuleFacts:
    imports: list[_Import] = field(default_factory=list)
    # Module-level `from m import a as b`: b -> (m, a); the re-exports a package `__init__` offers.
    bindings: dict[str, tuple[str, str]] = field(default_factory=dict)
    unresolved: list[tuple[int, str, str]] = field(default_factory=list)


def module_names(files: Mapping[str, str]) -> dict[str, str]:
    """Dotted module name -> file, for files under the project root or a `src/` layout root."""
    names: dict[str, str] = {}
    has_src_package = "src/__init__.py" in files
    for path in files:
        if not path.endswith(".py"):
            continue
        parts = list(PurePosixPath(path).with_suffix("").parts)
        if parts and parts[0] == "src" and not has_src_package and len(parts) > 1:
            parts = parts[1:]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and all(part.isidentifier() for part in parts):
            names.setdefault(".".join(parts), path)
    return names


def _package_of(path: str, module: str) -> str:
    return module if path.endswith("__init__.py") else module.rpartition(".")[0]


def _absolute(level: int, module: str | None, package: str) -> str | None:
    if level == 0:
        return module or ""
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        return None
    base = parts[: len(parts) - (level - 1)]
    if module:
        base.append(module)
    return ".".join(base)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_main_guard(test: ast.expr) -> bool:
    """`if __name__ == "__main__":` (either order, or and-ed with other tests): runs only as a program."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return any(_is_main_guard(value) for value in test.values)
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(n, ast.Name) and n.id == "__name__" for n in sides) and any(
        isinstance(n, ast.Constant) and n.value == "__main__" for n in sides
    )


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


# Fields holding statement lists (Module, def, class, if/for/while/with/try bodies, except and match cases).
_STATEMENT_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")
# Without these in the source no call can be a dynamic import, so expressions need not be visited.
_DYNAMIC_IMPORT_MARKERS = ("import_module", "__import__")


class _Collector(ast.NodeVisitor):
    def __init__(self, package: str, scan_calls: bool = True) -> None:
        self.package = package
        self.scan_calls = scan_calls
        self.facts = _ModuleFacts()
        self._type_only = 0
        self._depth = 0  # >0 inside functions/classes: bindings there are not module attributes
        self._functions = 0  # >0 inside function bodies: imports there run only when called

    def generic_visit(self, node: ast.AST) -> None:
        if self.scan_calls:
            super().generic_visit(node)
            return
        # Import statements only occur in statement lists: walking those alone is several times faster.
        for name in _STATEMENT_FIELDS:
            for child in getattr(node, name, None) or ():
                if isinstance(child, ast.AST):
                    self.visit(child)

    def _kind(self) -> EdgeKind:
        return EdgeKind.TYPE if self._type_only else EdgeKind.STATIC

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._type_only += 1
            for child in node.body:
                self.visit(child)
            self._type_only -= 1
            for child in node.orelse:
                self.visit(child)
        elif _is_main_guard(node.test):
            self._functions += 1  # like a function body: importing the module does not run it
            for child in node.body:
                self.visit(child)
            self._functions -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    def _function(self, node: ast.AST) -> None:
        self._depth += 1
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function  # noqa: N815

    def _add(self, module: str, names: tuple[str, ...], line: int, kind: EdgeKind, specifier: str) -> None:
        self.facts.imports.append(_Import(module, names, line, kind, specifier, deferred=self._functions > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, (), node.lineno, self._kind(), alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        specifier = "." * node.level + (node.module or "")
        module = _absolute(node.level, node.module, self.package)
        if module is None:
            self.facts.unresolved.append((node.lineno, specifier, "relative import beyond the top package"))
            return
        names = tuple(alias.name for alias in node.names)
        self._add(module, names, node.lineno, self._kind(), specifier)
        if self._depth == 0:
            for alias in node.names:
                if alias.name != "*":
                    self.facts.bindings[alias.asname or alias.name] = (module, alias.name)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("import_module", "__import__") and node.args:
            target = _literal(node.args[0])
            package = _literal(node.args[1]) if len(node.args) > 1 and name == "import_module" else None
            for keyword in node.keywords:
                if keyword.arg == "package":
                    package = _literal(keyword.value)
            if target is None:
                self.facts.unresolved.append(
                    (
                        node.lineno,
                        f"{name}({ast.unparse(node.args[0])})",
                        "dynamic import with a computed name",
                    )
                )
            else:
                level = len(target) - len(target.lstrip("."))
                module = (
                    _absolute(level, target[level:] or None, package or self.package) if level else target
                )
                if module is None:
                    self.facts.unresolved.append((node.lineno, target, "relative import without a package"))
                else:
                    self._add(module, (), node.lineno, EdgeKind.DYNAMIC, target)
        self.generic_visit(node)


def _facts(path: str, module: str, source: str) -> _ModuleFacts:
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as error:
        facts = _ModuleFacts()
        facts.unresolved.append((error.lineno or 0, path, f"syntax error: {error.msg}"))
        return facts
    scan_calls = any(marker in source for marker in _DYNAMIC_IMPORT_MARKERS)
    collector = _Collector(_package_of(path, module), scan_calls)
    collector.visit(tree)
    return collector.facts


def _chain(module: str) -> Iterator[str]:
    """`a.b.c` -> a, a.b, a.b.c: importing a submodule runs every parent package first."""
    parts = module.split(".")
    for end in range(1, len(parts) + 1):
        yield ".".join(parts[:end])


def analyze_python(files: Mapping[str, str]) -> DependencyGraph:
    """The file graph of the Python files among `files` (project-relative path -> source text)."""
    modules = module_names(files)
    module_of = {path: name for name, path in modules.items()}
    # Scripts outside any importable path (`tools/run-me.py`) still import project modules.
    facts = {
        path: _facts(path, module_of.get(path, ""), source)
        for path, source in files.items()
        if path.endswith(".py")
    }
    graph = DependencyGraph(files=sorted(facts))

    def follow(module: str, name: str, depth: int) -> str | None:
        """The file that really defines `name` offered by `module`, following `__init__` re-exports."""
        path = modules.get(module)
        if path is None or depth > MAX_REEXPORT_DEPTH:
            return path
        binding = facts[path].bindings.get(name)
        if binding is None:
            return path
        origin, original = binding
        if f"{origin}.{original}" in modules:
            return modules[f"{origin}.{original}"]
        return follow(origin, original, depth + 1) if origin in modules else path

    for path, fact in facts.items():
        for line, specifier, reason in fact.unresolved:
            graph.unresolved.append(Unresolved(path, line, specifier, reason))
        for item in fact.imports:
            found = item.module in modules
            only_submodules = bool(item.names) and all(f"{item.module}.{n}" in modules for n in item.names)
            for parent in _chain(item.module):
                if parent in modules:
                    own = parent == item.module and not only_submodules
                    kind = item.kind if own else EdgeKind.PACKAGE
                    graph.edges.append(
                        Edge(path, modules[parent], kind, item.line, item.specifier, deferred=item.deferred)
                    )
            for name in item.names:
                submodule = f"{item.module}.{name}"
                if submodule in modules:
                    found = True
                    graph.edges.append(
                        Edge(
                            path,
                            modules[submodule],
                            item.kind,
                            item.line,
                            item.specifier,
                            deferred=item.deferred,
                        )
                    )
                elif name != "*" and item.module in modules:
                    real = follow(item.module, name, 0)
                    if real is not None and real != modules[item.module]:
                        graph.edges.append(
                            Edge(
                                path,
                                real,
                                EdgeKind.RE_EXPORT,
                                item.line,
                                item.specifier,
                                via=modules[item.module],
                                deferred=item.deferred,
                            )
                        )
            if not found:
                if item.specifier.startswith(".") or item.module.partition(".")[0] in modules:
                    graph.unresolved.append(
                        Unresolved(path, item.line, item.specifier, "module not found in the project")
                    )
                else:
                    graph.external.setdefault(path, set()).add(item.module.partition(".")[0])
    graph.edges = sorted({edge for edge in graph.edges if edge.source != edge.target})
    graph.unresolved.sort()
    return graph
