"""TypeScript/JavaScript module resolution over a known file set, and barrel re-exports followed to the real file."""

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mge.deps.graph import DependencyGraph, Edge, EdgeKind, Unresolved
from mge.deps.tsconfig import TsConfig

TS_EXTENSIONS = (".ts", ".tsx", ".d.ts")
JS_EXTENSIONS = (".js", ".jsx")
SOURCE_SUFFIXES = (".ts", ".tsx", ".mts", ".cts", ".js", ".jsx", ".mjs", ".cjs")
# Written extension -> the TypeScript sources tsc tries first (`./a.js` is `./a.ts` before it is compiled).
_MAPPED = {
    ".js": (".ts", ".tsx", ".d.ts"),
    ".jsx": (".tsx", ".d.ts"),
    ".mjs": (".mts", ".d.mts"),
    ".cjs": (".cts", ".d.cts"),
}
MAX_BARREL_DEPTH = 32


@dataclass(frozen=True)
class Specifier:
    """One module reference in a file, as the parser saw it."""

    specifier: str | None  # None: a dynamic import whose argument is not a literal
    line: int
    kind: EdgeKind
    names: tuple[str, ...] | None = None  # imported names; None for namespace/side-effect/dynamic
    reexports: tuple[tuple[str, str], ...] | None = None  # (imported, exported); None for `export *`
    prefix: str | None = None  # literal head/tail of a template-literal dynamic import
    suffix: str = ""
    text: str = ""


@dataclass(frozen=True)
class SourceFacts:
    file: str
    specifiers: tuple[Specifier, ...] = ()
    exports: frozenset[str] = field(default_factory=frozenset)  # names the file itself declares
    # tree-sitter met a syntax error: what follows it may be lost, so the file is read again by the compiler.
    partial: bool = False


def is_source(path: str) -> bool:
    return path.endswith(SOURCE_SUFFIXES)


def _is_relative(spec: str) -> bool:
    return spec in (".", "..") or spec.startswith(("./", "../", "/"))


def package_name(spec: str) -> str:
    parts = spec.split("/")
    return "/".join(parts[:2]) if spec.startswith("@") and len(parts) > 1 else parts[0]


def _match_pattern(pattern: str, spec: str) -> str | None:
    """The part of `spec` matched by the `*` in `pattern` ('' for an exact match); None if no match."""
    if "*" not in pattern:
        return "" if pattern == spec else None
    head, _, tail = pattern.partition("*")
    if spec.startswith(head) and spec.endswith(tail) and len(spec) >= len(head) + len(tail):
        return spec[len(head) : len(spec) - len(tail)]
    return None


def _best_pattern(patterns: Iterable[str], spec: str) -> tuple[str, str] | None:
    """Exact keys win, then the longest prefix before `*`, as in tsc and Node."""
    best: tuple[str, str] | None = None
    for pattern in patterns:
        star = _match_pattern(pattern, spec)
        if star is None:
            continue
        if "*" not in pattern:
            return pattern, star
        if best is None or len(pattern.partition("*")[0]) > len(best[0].partition("*")[0]):
            best = (pattern, star)
    return best


def conditional_targets(value: Any, conditions: Sequence[str]) -> list[str]:
    """Targets of one `exports`/`imports` entry: strings, fallback arrays and nested condition objects."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [target for item in value for target in conditional_targets(item, conditions)]
    if isinstance(value, dict):
        for key, nested in value.items():
            if key in conditions or key == "default":
                return conditional_targets(nested, conditions)
    return []


def map_entry(mapping: Any, subpath: str, conditions: Sequence[str]) -> list[str] | None:
    """Targets for `subpath` ('.', './x', '#x') in an `exports`/`imports` map; None if it has no entry."""
    if isinstance(mapping, (str, list)) or (
        isinstance(mapping, dict) and mapping and not any(str(k).startswith((".", "#")) for k in mapping)
    ):
        return conditional_targets(mapping, conditions) if subpath == "." else None
    if not isinstance(mapping, dict):
        return None
    match = _best_pattern(mapping, subpath)
    if match is None:
        return None
    pattern, star = match
    return [target.replace("*", star) for target in conditional_targets(mapping[pattern], conditions)]


class Resolver:
    """tsc-style resolution (bundler/node16 rules) of specifiers to files of one project."""

    def __init__(
        self,
        files: Iterable[str],
        config: TsConfig,
        packages: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.files = frozenset(files)
        self.config = config
        # package.json files of the project: directory -> parsed content.
        self.packages = dict(packages or {})

    def _exists(self, path: str) -> bool:
        return path in self.files

    def _file(self, path: str) -> str | None:
        for written, mapped in _MAPPED.items():
            if path.endswith(written):
                stem = path[: -len(written)]
                for extension in mapped:
                    if self._exists(stem + extension):
                        return stem + extension
                return path if self._exists(path) else None
        if path.endswith((".ts", ".tsx", ".mts", ".cts")) and self._exists(path):
            return path
        if path.endswith(".json"):
            # tsc imports JSON modules only with resolveJsonModule.
            return path if self.config.resolve_json and self._exists(path) else None
        for extension in TS_EXTENSIONS + (JS_EXTENSIONS if self.config.allow_js else ()):
            if self._exists(path + extension):
                return path + extension
        for extension in JS_EXTENSIONS:
            if self._exists(path + extension):
                return path + extension
        return None

    def resolve_path(self, path: str) -> str | None:
        path = posixpath.normpath(path)
        if path.startswith("../"):
            return None
        found = self._file(path)
        if found is not None:
            return found
        directory = "" if path == "." else path
        package = self.packages.get(directory)
        if package is not None:
            for key in ("types", "typings", "main"):
                entry = package.get(key)
                if isinstance(entry, str):
                    found = self._file(posixpath.normpath(posixpath.join(directory, entry)))
                    if found is not None:
                        return found
        return self._file(posixpath.join(directory, "index") if directory else "index")

    def _scope(self, file: str) -> str | None:
        """The directory of the nearest package.json above `file`."""
        directory = posixpath.dirname(file)
        while True:
            if directory in self.packages:
                return directory
            if not directory:
                return None
            directory = posixpath.dirname(directory)

    def _from_map(self, directory: str, targets: list[str]) -> str | None:
        for target in targets:
            found = self.resolve_path(posixpath.join(directory, target))
            if found is not None:
                return found
        return None

    def conditions(self, kind: EdgeKind) -> tuple[str, ...]:
        mode = "require" if kind is EdgeKind.REQUIRE else "import"
        return ("types", mode, *self.config.custom_conditions)

    def resolve(self, spec: str, source: str, kind: EdgeKind = EdgeKind.STATIC) -> str | None:
        """The project file `spec` names from `source`, or None when it is outside the project."""
        if _is_relative(spec):
            start = "" if spec.startswith("/") else posixpath.dirname(source)
            return self.resolve_path(
                posixpath.join(start, spec.lstrip("/") if spec.startswith("/") else spec)
            )
        conditions = self.conditions(kind)
        if spec.startswith("#"):
            scope = self._scope(source)
            if scope is not None:
                targets = map_entry(self.packages[scope].get("imports"), spec, conditions)
                if targets:
                    return self._from_map(scope, targets)
            return None
        match = _best_pattern(self.config.paths, spec)
        if match is not None:
            pattern, star = match
            for substitution in self.config.paths[pattern]:
                found = self.resolve_path(
                    posixpath.join(self.config.paths_base, substitution.replace("*", star))
                )
                if found is not None:
                    return found
        if self.config.base_url is not None:
            found = self.resolve_path(posixpath.join(self.config.base_url, spec))
            if found is not None:
                return found
        name = package_name(spec)
        scope = self._scope(source)
        if (
            scope is not None
            and self.packages[scope].get("name") == name
            and "exports" in self.packages[scope]
        ):
            targets = map_entry(self.packages[scope]["exports"], "." + spec[len(name) :], conditions)
            if targets:
                return self._from_map(scope, targets)
        return None

    def resolve_pattern(self, prefix: str, suffix: str, source: str) -> list[str]:
        """Files a template-literal import like `./locales/${x}.js` can load: literal head and tail match."""
        if not _is_relative(prefix):
            return []
        head = posixpath.normpath(posixpath.join(posixpath.dirname(source), prefix))
        if prefix.endswith("/"):
            head = "" if head == "." else head + "/"
        tails = [suffix]
        for written, mapped in _MAPPED.items():
            if suffix.endswith(written):
                tails += [suffix[: -len(written)] + extension for extension in mapped]
        return sorted(
            path
            for path in self.files
            if path != source
            and path.startswith(head)
            and is_source(path)
            and (any(path.endswith(tail) for tail in tails) if suffix else True)
        )


def analyze_typescript(facts: Iterable[SourceFacts], resolver: Resolver) -> DependencyGraph:
    """The file graph of the parsed TypeScript/JavaScript sources, barrels followed to the defining file."""
    by_file = {fact.file: fact for fact in facts}
    graph = DependencyGraph(files=sorted(by_file))
    resolved: dict[tuple[str, int, str, EdgeKind], str | None] = {}

    def target_of(fact: SourceFacts, spec: Specifier) -> str | None:
        assert spec.specifier is not None
        key = (fact.file, spec.line, spec.specifier, spec.kind)
        if key not in resolved:
            resolved[key] = resolver.resolve(spec.specifier, fact.file, spec.kind)
        return resolved[key]

    def definition(file: str, name: str, seen: frozenset[str]) -> str | None:
        """The file that declares `name` exported by `file`, through `export {..} from` and `export *`."""
        fact = by_file.get(file)
        if fact is None or file in seen or len(seen) > MAX_BARREL_DEPTH:
            return None
        if name in fact.exports:
            return file
        for spec in fact.specifiers:
            if spec.kind is not EdgeKind.RE_EXPORT or spec.specifier is None:
                continue
            target = target_of(fact, spec)
            if target is None:
                continue
            if spec.reexports is None:
                if name != "default":
                    found = definition(target, name, seen | {file})
                    if found is not None:
                        return found
                continue
            for imported, exported in spec.reexports:
                if exported == name:
                    return (
                        target if imported == "*" else definition(target, imported, seen | {file}) or target
                    )
        return None

    for fact in by_file.values():
        for spec in fact.specifiers:
            if spec.specifier is None:
                candidates = (
                    resolver.resolve_pattern(spec.prefix, spec.suffix, fact.file) if spec.prefix else []
                )
                if not candidates:
                    what = "require() with a computed argument" if spec.kind is EdgeKind.REQUIRE else None
                    graph.unresolved.append(
                        Unresolved(
                            fact.file,
                            spec.line,
                            spec.text or "import(?)",
                            what or "dynamic import with a computed specifier",
                        )
                    )
                graph.edges.extend(
                    Edge(fact.file, candidate, EdgeKind.DYNAMIC, spec.line, spec.text)
                    for candidate in candidates
                )
                continue
            target = target_of(fact, spec)
            if target is None:
                if _is_relative(spec.specifier) or spec.specifier.startswith("#"):
                    graph.unresolved.append(
                        Unresolved(fact.file, spec.line, spec.specifier, "no such file in the project")
                    )
                else:
                    graph.external.setdefault(fact.file, set()).add(package_name(spec.specifier))
                continue
            graph.edges.append(Edge(fact.file, target, spec.kind, spec.line, spec.specifier))
            names = spec.names or ()
            if spec.reexports:
                names = tuple(imported for imported, _ in spec.reexports if imported != "*")
            for name in names:
                real = definition(target, name, frozenset())
                if real is not None and real != target:
                    graph.edges.append(
                        Edge(fact.file, real, spec.kind, spec.line, spec.specifier, via=target)
                    )
    graph.edges = sorted({edge for edge in graph.edges if edge.source != edge.target})
    graph.unresolved.sort()
    return graph
