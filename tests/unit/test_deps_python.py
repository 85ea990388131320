"""Python import analysis: relative/absolute imports, TYPE_CHECKING, importlib, `__init__` re-exports."""

from mge.deps.compare import seen_at_import
from mge.deps.graph import EdgeKind
from mge.deps.python import analyze_python, module_names


def _pairs(files: dict[str, str]) -> set[tuple[str, str, EdgeKind]]:
    return {(e.source, e.target, e.kind) for e in analyze_python(files).edges}


def test_relative_import_resolves_against_the_importing_package() -> None:
    files = {"pkg/__init__.py": "", "pkg/a.py": "from .b import f\n", "pkg/b.py": "def f(): ...\n"}
    assert ("pkg/a.py", "pkg/b.py", EdgeKind.STATIC) in _pairs(files)


def test_importing_a_submodule_also_needs_every_parent_package() -> None:
    files = {"a/__init__.py": "", "a/b/__init__.py": "", "a/b/c.py": "", "main.py": "import a.b.c\n"}
    targets = {(t, k) for s, t, k in _pairs(files) if s == "main.py"}
    assert targets == {
        ("a/__init__.py", EdgeKind.PACKAGE),
        ("a/b/__init__.py", EdgeKind.PACKAGE),
        ("a/b/c.py", EdgeKind.STATIC),
    }


def test_from_package_import_submodule_points_at_the_submodule() -> None:
    files = {"pkg/__init__.py": "", "pkg/sub.py": "", "main.py": "from pkg import sub\n"}
    assert ("main.py", "pkg/sub.py", EdgeKind.STATIC) in _pairs(files)


def test_name_re_exported_by_init_is_followed_to_the_defining_module() -> None:
    files = {
        "pkg/__init__.py": "from .impl import Thing as Public\n",
        "pkg/impl.py": "class Thing: ...\n",
        "main.py": "from pkg import Public\n",
    }
    edges = [e for e in analyze_python(files).edges if e.source == "main.py" and e.kind is EdgeKind.RE_EXPORT]
    assert [(e.target, e.via) for e in edges] == [("pkg/impl.py", "pkg/__init__.py")]


def test_imports_under_type_checking_are_type_edges() -> None:
    files = {"a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import b\n", "b.py": ""}
    assert ("a.py", "b.py", EdgeKind.TYPE) in _pairs(files)


def test_importlib_with_literal_and_relative_package_is_a_dynamic_edge() -> None:
    files = {
        "plugins/__init__.py": "",
        "plugins/sink.py": "",
        "main.py": "import importlib\nimportlib.import_module('.sink', package='plugins')\n__import__('plugins')\n",
    }
    pairs = _pairs(files)
    assert ("main.py", "plugins/sink.py", EdgeKind.DYNAMIC) in pairs
    assert ("main.py", "plugins/__init__.py", EdgeKind.DYNAMIC) in pairs


def test_computed_importlib_name_is_reported_with_its_line() -> None:
    graph = analyze_python({"main.py": "import importlib\n\nimportlib.import_module(name)\n"})
    assert [(u.file, u.line, u.specifier) for u in graph.unresolved] == [
        ("main.py", 3, "import_module(name)")
    ]


def test_relative_import_of_a_missing_module_is_reported_not_dropped() -> None:
    graph = analyze_python({"pkg/__init__.py": "", "pkg/a.py": "from .gone import x\n"})
    assert [(u.file, u.specifier) for u in graph.unresolved] == [("pkg/a.py", ".gone")]


def test_third_party_imports_are_external_not_edges() -> None:
    graph = analyze_python({"main.py": "import fastapi.routing\nfrom pydantic import BaseModel\n"})
    assert graph.edges == []
    assert graph.external == {"main.py": {"fastapi", "pydantic"}}


def test_src_layout_modules_are_named_without_src() -> None:
    assert module_names({"src/shop/__init__.py": "", "src/shop/cart.py": ""}) == {
        "shop": "src/shop/__init__.py",
        "shop.cart": "src/shop/cart.py",
    }


def test_circular_imports_give_edges_both_ways() -> None:
    pairs = _pairs({"a.py": "import b\n", "b.py": "import a\n"})
    assert {("a.py", "b.py", EdgeKind.STATIC), ("b.py", "a.py", EdgeKind.STATIC)} <= pairs


def test_syntax_error_is_reported_as_unresolved_with_line() -> None:
    graph = analyze_python({"bad.py": "def broken(:\n"})
    assert graph.unresolved[0].file == "bad.py"
    assert "syntax error" in graph.unresolved[0].reason


def test_from_package_import_submodules_runs_the_package_only_as_a_parent() -> None:
    files = {"pkg/__init__.py": "", "pkg/sub.py": "", "main.py": "from pkg import sub\n"}
    assert ("main.py", "pkg/__init__.py", EdgeKind.PACKAGE) in _pairs(files)


def test_script_outside_any_package_path_still_has_its_imports() -> None:
    files = {"app/__init__.py": "", "app/core.py": "", "tools/run-me.py": "from app import core\n"}
    assert ("tools/run-me.py", "app/core.py", EdgeKind.STATIC) in _pairs(files)


def test_imports_in_function_bodies_and_main_guards_are_deferred_class_bodies_are_not() -> None:
    graph = analyze_python(
        {
            "a.py": (
                "import b\n"
                "def f():\n    import c\n"
                "class K:\n    import d\n"
                "if __name__ == '__main__':\n    import e\n"
                "if sys.platform != 'win32' and '__main__' == __name__:\n    import f\n"
                "g = lambda: __import__('g')\n"
            ),
            **{f"{name}.py": "" for name in "bcdefg"},
        }
    )
    deferred = {edge.target: edge.deferred for edge in graph.edges}
    assert deferred == {"b.py": False, "c.py": True, "d.py": False, "e.py": True, "f.py": True, "g.py": True}
    assert [e.target for e in graph.edges if seen_at_import(e)] == ["b.py", "d.py"]
