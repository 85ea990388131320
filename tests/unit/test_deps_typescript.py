"""TypeScript resolution over a file set: extensions, index files, paths, exports/imports maps, barrels."""

import pytest

from mge.deps.graph import EdgeKind
from mge.deps.tsconfig import TsConfig, TsConfigError, merge_chain, parse_jsonc
from mge.deps.typescript import Resolver, SourceFacts, Specifier, analyze_typescript, map_entry


def _resolver(files: list[str], config: TsConfig | None = None, packages: dict | None = None) -> Resolver:  # type: ignore[type-arg]
    return Resolver(files, config or TsConfig(), packages or {})


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("./a", "src/a.ts"),
        ("./a.js", "src/a.ts"),
        ("./view", "src/view.tsx"),
        ("./dir", "src/dir/index.ts"),
        ("./types", "src/types.d.ts"),
        ("./esm.mjs", "src/esm.mts"),
        ("../root", "root.ts"),
    ],
)
def test_relative_specifiers_resolve_like_tsc(spec: str, expected: str) -> None:
    files = [
        "src/a.ts",
        "src/view.tsx",
        "src/dir/index.ts",
        "src/types.d.ts",
        "src/esm.mts",
        "root.ts",
        "src/main.ts",
    ]
    assert _resolver(files).resolve(spec, "src/main.ts") == expected


def test_ts_source_wins_over_a_compiled_js_with_the_same_name() -> None:
    assert _resolver(["a.ts", "a.js", "m.ts"]).resolve("./a.js", "m.ts") == "a.ts"


def test_path_alias_shadowing_a_package_name_wins_over_node_modules() -> None:
    config = TsConfig(paths={"lodash": ["src/vendor/lodash.ts"]}, paths_base="")
    assert (
        _resolver(["src/vendor/lodash.ts", "src/m.ts"], config).resolve("lodash", "src/m.ts")
        == "src/vendor/lodash.ts"
    )


def test_longest_path_pattern_wins() -> None:
    config = TsConfig(paths={"@/*": ["src/*"], "@/ui/*": ["ui/*"]})
    resolver = _resolver(["src/ui/x.ts", "ui/x.ts", "m.ts"], config)
    assert resolver.resolve("@/ui/x", "m.ts") == "ui/x.ts"
    assert resolver.resolve("@/ui", "m.ts") is None


def test_package_imports_map_picks_the_types_condition() -> None:
    packages = {"": {"imports": {"#int/*": {"types": "./src/int/*.ts", "default": "./dist/int/*.js"}}}}
    assert (
        _resolver(["src/int/k.ts", "src/m.ts"], packages=packages).resolve("#int/k", "src/m.ts")
        == "src/int/k.ts"
    )


def test_self_reference_through_conditional_exports() -> None:
    packages = {"": {"name": "me", "exports": {"./feat": {"require": "./f.cjs", "types": "./src/feat.ts"}}}}
    assert (
        _resolver(["src/feat.ts", "src/m.ts"], packages=packages).resolve("me/feat", "src/m.ts")
        == "src/feat.ts"
    )


def test_exports_sugar_forms() -> None:
    assert map_entry("./i.js", ".", ["import"]) == ["./i.js"]
    assert map_entry({"import": "./i.js", "require": "./r.cjs"}, ".", ["require"]) == ["./r.cjs"]
    assert map_entry({"./a/*": {"default": "./lib/*.js"}}, "./a/b", ["import"]) == ["./lib/b.js"]
    assert map_entry({"./a": "./a.js"}, "./missing", ["import"]) is None


def test_bare_package_is_external() -> None:
    graph = analyze_typescript(
        [SourceFacts("m.ts", (Specifier("@scope/pkg/deep", 1, EdgeKind.STATIC),))], _resolver(["m.ts"])
    )
    assert graph.external == {"m.ts": {"@scope/pkg"}}


def test_export_star_chain_is_followed_to_the_defining_file() -> None:
    facts = [
        SourceFacts("m.ts", (Specifier("./lib", 1, EdgeKind.STATIC, names=("clamp",)),)),
        SourceFacts("lib/index.ts", (Specifier("./math", 1, EdgeKind.RE_EXPORT),)),
        SourceFacts("lib/math.ts", (Specifier("./clamp", 1, EdgeKind.RE_EXPORT),)),
        SourceFacts("lib/clamp.ts", exports=frozenset({"clamp"})),
    ]
    graph = analyze_typescript(facts, _resolver([f.file for f in facts]))
    followed = [(e.target, e.via) for e in graph.edges if e.source == "m.ts" and e.via]
    assert followed == [("lib/clamp.ts", "lib/index.ts")]


def test_renamed_re_export_is_followed_by_its_original_name() -> None:
    facts = [
        SourceFacts("m.ts", (Specifier("./b", 1, EdgeKind.TYPE, names=("Public",)),)),
        SourceFacts("b.ts", (Specifier("./impl", 1, EdgeKind.RE_EXPORT, reexports=(("Inner", "Public"),)),)),
        SourceFacts("impl.ts", exports=frozenset({"Inner"})),
    ]
    graph = analyze_typescript(facts, _resolver([f.file for f in facts]))
    assert ("impl.ts", EdgeKind.TYPE) in {(e.target, e.kind) for e in graph.edges if e.source == "m.ts"}


def test_circular_export_star_terminates() -> None:
    facts = [
        SourceFacts("m.ts", (Specifier("./a", 1, EdgeKind.STATIC, names=("x",)),)),
        SourceFacts("a.ts", (Specifier("./b", 1, EdgeKind.RE_EXPORT),)),
        SourceFacts("b.ts", (Specifier("./a", 1, EdgeKind.RE_EXPORT),)),
    ]
    graph = analyze_typescript(facts, _resolver([f.file for f in facts]))
    assert {(e.source, e.target) for e in graph.edges} == {
        ("m.ts", "a.ts"),
        ("a.ts", "b.ts"),
        ("b.ts", "a.ts"),
    }


def test_template_literal_dynamic_import_matches_files_by_prefix_and_suffix() -> None:
    facts = [
        SourceFacts(
            "m.ts",
            (Specifier(None, 4, EdgeKind.DYNAMIC, prefix="./loc/", suffix=".js", text="`./loc/${l}.js`"),),
        )
    ]
    graph = analyze_typescript(facts, _resolver(["m.ts", "loc/en.ts", "loc/fr.ts", "loc/notes.md"]))
    assert [e.target for e in graph.edges] == ["loc/en.ts", "loc/fr.ts"]
    assert graph.unresolved == []


def test_computed_dynamic_import_is_reported_with_file_and_line() -> None:
    facts = [SourceFacts("m.ts", (Specifier(None, 7, EdgeKind.DYNAMIC, text="name"),))]
    graph = analyze_typescript(facts, _resolver(["m.ts"]))
    assert str(graph.unresolved[0]) == "m.ts:7: name (dynamic import with a computed specifier)"


def test_missing_relative_file_is_reported() -> None:
    graph = analyze_typescript(
        [SourceFacts("m.ts", (Specifier("./gone", 2, EdgeKind.STATIC),))], _resolver(["m.ts"])
    )
    assert [(u.line, u.specifier) for u in graph.unresolved] == [(2, "./gone")]


def test_tsconfig_chain_keeps_paths_relative_to_the_declaring_config() -> None:
    base = parse_jsonc(
        '{/* base */ "compilerOptions": {"paths": {"@x/*": ["./x/*"],},}, // trailing\n}', "base"
    )
    own = parse_jsonc('{"compilerOptions": {"allowJs": true, "url": "http://a//b"}}', "own")
    config = merge_chain([("config", base), ("", own)])
    assert config.paths == {"@x/*": ["./x/*"]}
    assert config.paths_base == "config"
    assert config.allow_js


def test_base_url_makes_paths_relative_to_it() -> None:
    config = merge_chain([("config", {"compilerOptions": {"baseUrl": "..", "paths": {"@/*": ["src/*"]}}})])
    assert (config.base_url, config.paths_base) == ("", "")


def test_invalid_tsconfig_names_the_file() -> None:
    with pytest.raises(TsConfigError, match=r"tsconfig.json: not valid JSON"):
        parse_jsonc("{ nope", "tsconfig.json")


def test_json_modules_resolve_only_with_resolve_json_module() -> None:
    files = ["data.json", "m.ts"]
    assert _resolver(files).resolve("./data.json", "m.ts") is None
    assert _resolver(files, TsConfig(resolve_json=True)).resolve("./data.json", "m.ts") == "data.json"
