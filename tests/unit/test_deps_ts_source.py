"""Module facts of TypeScript/JavaScript sources read from the tree-sitter syntax tree: kinds, names, lines."""

import pytest

from mge.deps.graph import EdgeKind
from mge.deps.ts_source import read_source
from mge.deps.typescript import Specifier


def _specs(code: str, file: str = "m.ts") -> list[Specifier]:
    return list(read_source(file, code.encode()).specifiers)


def _one(code: str, file: str = "m.ts") -> Specifier:
    (spec,) = _specs(code, file)
    return spec


def _exports(code: str, file: str = "m.ts") -> set[str]:
    return set(read_source(file, code.encode()).exports)


@pytest.mark.parametrize(
    ("code", "kind", "names"),
    [
        ('import d from "./x";', EdgeKind.STATIC, ("default",)),
        ('import { a, b as c } from "./x";', EdgeKind.STATIC, ("a", "b")),
        ('import d, * as ns from "./x";', EdgeKind.STATIC, None),
        ('import type { A } from "./x";', EdgeKind.TYPE, ("A",)),
        ('import { type A, type B } from "./x";', EdgeKind.TYPE, ("A", "B")),
        ('import { type A, b } from "./x";', EdgeKind.STATIC, ("A", "b")),
        ('import { "a-b" as ab } from "./x";', EdgeKind.STATIC, ("a-b",)),
        ('import {} from "./x";', EdgeKind.STATIC, ()),
        ('import x = require("./x");', EdgeKind.STATIC, None),
        ('import type x = require("./x");', EdgeKind.TYPE, None),
    ],
)
def test_import_declarations_give_kind_and_imported_names(
    code: str, kind: EdgeKind, names: tuple[str, ...] | None
) -> None:
    spec = _one(code)
    assert (spec.specifier, spec.kind, spec.names) == ("./x", kind, names)


def test_side_effect_import_and_import_attributes() -> None:
    assert _one('import "./polyfill";').kind is EdgeKind.SIDE_EFFECT
    assert _one('import data from "./d.json" with { type: "json" };').specifier == "./d.json"


@pytest.mark.parametrize(
    ("code", "reexports"),
    [
        ('export * from "./x";', None),
        ('export * as ns from "./x";', (("*", "ns"),)),
        ('export { a as b, c } from "./x";', (("a", "b"), ("c", "c"))),
        ('export type { T } from "./x";', (("T", "T"),)),
        ('export { default } from "./x";', (("default", "default"),)),
        ('export type * from "./x";', None),  # TS 5.0 syntax the grammar recovers from
    ],
)
def test_re_exports_keep_the_name_pairs(code: str, reexports: tuple[tuple[str, str], ...] | None) -> None:
    spec = _one(code)
    assert (spec.specifier, spec.kind, spec.reexports) == ("./x", EdgeKind.RE_EXPORT, reexports)


def test_exporting_an_imported_binding_is_a_re_export_even_before_the_import() -> None:
    specs = _specs('export { a as b, own };\nimport { x as a } from "./x";\nconst own = 1;\n')
    reexport = next(spec for spec in specs if spec.kind is EdgeKind.RE_EXPORT)
    assert (reexport.specifier, reexport.reexports, reexport.line) == ("./x", (("x", "b"),), 1)


def test_declared_names_are_the_file_exports() -> None:
    code = """
export const [a, { b, c: d, ...e }] = f(), g = 1;
export let h: number;
export function i() {}
export function* j() {}
export function k(): void;
export class L {}
export abstract class M {}
export interface N {}
export type O = string;
export enum P { Q }
export namespace R { export const notAModuleExport = 1; }
export declare const s: number;
export declare function t(): void;
export import U = R.notAModuleExport;
export { own as V };
const own = 1;
"""
    assert _exports(code) == {*"abdeghijkLMNOPRstU", "V"}


@pytest.mark.parametrize("code", ["export default 1;", "export default function () {}", "export = x;"])
def test_default_exports(code: str) -> None:
    assert _exports(code) == {"default"}


def test_variance_annotations_the_grammar_does_not_know_do_not_hide_exports() -> None:
    assert _exports("export interface Box<in out T> { value: T }\nexport const after = 1;\n") == {
        "Box",
        "after",
    }


VARIANCE = """export interface Box<in out T, out U = import("./default").D> { value: T }
/** @ts-ignore */
export interface Tagged<
  out T extends string = string,
> extends Box<T, T> {}
export class Cell<in T> {}
export type Read<out T> = () => T;
export * from "./rest";
"""


def test_a_file_whose_only_errors_are_variance_annotations_is_a_whole_reading() -> None:
    """tree-sitter-typescript 0.23.2 puts `out`/`in` (or the name after them) in ERROR nodes inside the type
    parameter list; nothing else is lost, so the file need not be read again by the compiler."""
    facts = read_source("m.ts", VARIANCE.encode())
    assert not facts.partial
    assert facts.exports == {"Box", "Tagged", "Cell", "Read"}
    assert [(s.specifier, s.kind) for s in facts.specifiers] == [
        ("./default", EdgeKind.TYPE),
        ("./rest", EdgeKind.RE_EXPORT),
    ]


@pytest.mark.parametrize(
    "code",
    [
        VARIANCE + "export const broken = (;\n",  # an error outside any type parameter list
        "interface A<T extends> {}\n",  # a missing type inside one
        "interface A<T, 1> {}\n",  # not a name inside one
    ],
)
def test_any_other_error_leaves_the_file_partial(code: str) -> None:
    assert read_source("m.ts", code.encode()).partial


def test_dynamic_imports_literal_template_and_computed() -> None:
    code = """async function load(lang: string, name: string) {
  await import("./util");
  await import(`./locales/${lang}.js`);
  await import(name);
  await import(`./fixed`);
}
"""
    literal, template, computed, fixed = _specs(code)
    assert (literal.specifier, literal.kind, literal.line) == ("./util", EdgeKind.DYNAMIC, 2)
    assert (template.specifier, template.prefix, template.suffix, template.text) == (
        None,
        "./locales/",
        ".js",
        "`./locales/${lang}.js`",
    )
    assert (computed.specifier, computed.text, computed.line) == (None, "name", 4)
    assert fixed.specifier == "./fixed"


def test_import_types_are_type_edges() -> None:
    specs = _specs(
        'type A = typeof import("./a");\nlet b: import("./b").B;\nconst c = import("./c").then();\n'
    )
    assert [(s.specifier, s.kind) for s in specs] == [
        ("./a", EdgeKind.TYPE),
        ("./b", EdgeKind.TYPE),
        ("./c", EdgeKind.DYNAMIC),
    ]


def test_require_calls_with_literal_and_computed_arguments() -> None:
    code = 'const a = require("./a");\nconst b = require(name);\nlib.require("./no");\nrequire("./x", 2);\n'
    literal, computed = _specs(code, "m.cjs")
    assert (literal.specifier, literal.kind) == ("./a", EdgeKind.REQUIRE)
    assert (computed.specifier, computed.text, computed.line) == (None, "name", 2)


def test_keywords_in_strings_comments_and_longer_names_are_not_imports() -> None:
    code = '// import("./c")\nconst s = "require(\'./s\')";\nimportant(1);\nrequireAll("./r");\n'
    assert _specs(code) == []


def test_reference_paths_count_only_at_the_top_of_the_file() -> None:
    code = '/// <reference path="globals.d.ts" />\n/// <reference types="node" />\nconst a = 1;\n/// <reference path="late.d.ts" />\n'
    assert [(s.specifier, s.kind, s.line) for s in _specs(code)] == [("./globals.d.ts", EdgeKind.TYPE, 1)]


def test_imports_inside_an_ambient_module_declaration() -> None:
    assert _one('declare module "lib" {\n  import { x } from "./x";\n}\n').line == 2


def test_jsx_in_javascript_files_and_escaped_specifiers() -> None:
    code = 'import React from "re\\u0061ct";\nexport const App = () => <div>{require("./view")}</div>;\n'
    facts = read_source("app.js", code.encode())
    assert [s.specifier for s in facts.specifiers] == ["react", "./view"]
    assert facts.exports == {"App"}


def test_a_malformed_escape_is_kept_as_written() -> None:
    assert _one('import x from "./a\\u12";\n').specifier == "./a\\u12"
    assert _one('import x from "./\\u{62}\\x63";\n').specifier == "./bc"
