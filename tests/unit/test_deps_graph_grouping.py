"""Unresolved imports are reported once per source line and reason, however many paths the line probes."""

from mge.deps.graph import Unresolved, grouped_unresolved


def test_a_line_probing_several_depths_is_one_line_and_other_lines_stay_apart():
    probes = [Unresolved("src/a.ts", 3, "../" * depth + "config", "not found") for depth in range(1, 9)]
    other = Unresolved("src/a.ts", 7, "./missing", "not found")
    dynamic = Unresolved("src/a.ts", 3, "`./${name}`", "computed")

    lines = grouped_unresolved([*probes, other, dynamic])

    assert lines == [
        "src/a.ts:3: " + ", ".join("../" * d + "config" for d in range(1, 9)) + " (not found)",
        "src/a.ts:7: ./missing (not found)",
        "src/a.ts:3: `./${name}` (computed)",
    ]
