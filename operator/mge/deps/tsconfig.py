"""tsconfig.json reading without I/O: JSON with comments, `extends` chains merged, paths/baseUrl resolved."""

import json
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_COMMENT_OR_STRING = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.DOTALL)
_TRAILING_COMMA = re.compile(r'"(?:\\.|[^"\\])*"|,(\s*[}\]])', re.DOTALL)


class TsConfigError(ValueError):
    pass


def parse_jsonc(text: str, where: str) -> dict[str, Any]:
    """tsconfig files allow comments and trailing commas; strings are kept as written."""
    without_comments = _COMMENT_OR_STRING.sub(
        lambda m: m.group(0) if m.group(0).startswith('"') else " ", text
    )
    cleaned = _TRAILING_COMMA.sub(
        lambda m: m.group(1) if m.group(1) is not None else m.group(0), without_comments
    )
    try:
        value = json.loads(cleaned) if cleaned.strip() else {}
    except json.JSONDecodeError as error:
        raise TsConfigError(
            f"{where}: not valid JSON ({error.msg} at line {error.lineno}); fix the file"
        ) from error
    if not isinstance(value, dict):
        raise TsConfigError(f"{where}: expected an object at the top level")
    return value


def extends_of(config: dict[str, Any]) -> list[str]:
    value = config.get("extends")
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(item) for item in value]


@dataclass(frozen=True)
class TsConfig:
    """The options module resolution needs; directories are project-relative ('' is the root)."""

    base_url: str | None = None
    paths: dict[str, list[str]] = field(default_factory=dict)
    paths_base: str = ""
    allow_js: bool = False
    resolve_json: bool = False
    custom_conditions: tuple[str, ...] = ()


def merge_chain(chain: Sequence[tuple[str, dict[str, Any]]]) -> TsConfig:
    """`chain` lists (directory, parsed config) from the base of the `extends` chain to the project's own.

    Later configs override earlier ones option by option, and `baseUrl`/`paths` stay relative to the
    config that declared them, as tsc does.
    """
    base_url: str | None = None
    paths: dict[str, list[str]] = {}
    paths_base = ""
    options: dict[str, Any] = {}
    for directory, config in chain:
        compiler = config.get("compilerOptions") or {}
        if not isinstance(compiler, dict):
            raise TsConfigError(f"{directory or '.'}/tsconfig: compilerOptions must be an object")
        options.update(compiler)
        if "baseUrl" in compiler:
            base_url = posixpath.normpath(posixpath.join(directory, str(compiler["baseUrl"])))
        if "paths" in compiler:
            raw = compiler["paths"] or {}
            paths = {str(key): [str(item) for item in value] for key, value in raw.items()}
            paths_base = directory
    if base_url is not None:
        # With a baseUrl, path substitutions are relative to it; without, to the config declaring them.
        paths_base = base_url
    return TsConfig(
        base_url=None if base_url is None else _dir(base_url),
        paths=paths,
        paths_base=_dir(paths_base),
        allow_js=bool(options.get("allowJs") or options.get("checkJs")),
        resolve_json=bool(options.get("resolveJsonModule")),
        custom_conditions=tuple(str(c) for c in options.get("customConditions") or ()),
    )


def _dir(path: str) -> str:
    return "" if path in (".", "") else path
