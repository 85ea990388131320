"""Dependency analysis benchmark on real TypeScript packages installed by `make setup` (rxjs, query-core, zod).

Ground truth: what tsc resolves (`--explainFiles`). Printed side by side: precision and recall of ours,
dependency-cruiser (`--ts-pre-compilation-deps`) and madge against it, and their wall-clock analysis
times with ratios. Each package's sources are copied out of node_modules first (both baselines skip
paths under node_modules); nothing is downloaded here.

Every run is a cold analysis: the analyzer keeps nothing between runs (no cache to bypass). "ours" is
`analyze_folder` in this process, as `mge run` calls it; "ours, own process" also pays for starting a
Python interpreter and importing the analyzer, as the baselines pay for starting Node. The tools take
turns for 5 rounds and the medians are printed; the load average is printed before and after: on a shared
machine the figures are only comparable within one run.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from mge.adapters.deps_scan import analyze_folder, tsc_edges
from mge.adapters.typescript import node_modules_path
from mge.deps.compare import agreement
from tests.bench.common import print_table

RUNS = 5
# A plain strict config for packages that do not ship theirs; every tool reads the same file.
DEFAULT_TSCONFIG = {
    "compilerOptions": {
        "target": "es2022",
        "module": "esnext",
        "moduleResolution": "bundler",
        "strict": True,
        "skipLibCheck": True,
        "noEmit": True,
    },
    "include": ["src"],
}
PACKAGES = {
    # ships its tsconfig.json: baseUrl + paths aliasing its own package name onto src/ barrels
    "rxjs": ["src", "tsconfig.json", "package.json"],
    "@tanstack/query-core": ["src", "package.json"],
    "zod": ["src", "package.json"],  # `.js` specifiers mapped to `.ts` sources, `export *` barrels
}


def _copy(package: str, into: Path) -> Path:
    source = node_modules_path() / package
    if not source.exists():
        sys.exit(f"{source} is missing: run `make setup` (it installs the benchmark packages)")
    root = into / package.replace("/", "__")
    root.mkdir()
    for item in PACKAGES[package]:
        (shutil.copytree if (source / item).is_dir() else shutil.copy)(source / item, root / item)
    if not (root / "tsconfig.json").exists():
        (root / "tsconfig.json").write_text(json.dumps(DEFAULT_TSCONFIG))
    return root


def _node(*args: str, cwd: Path) -> str:
    """stdout goes to a file, not a pipe: Node writes to a pipe asynchronously, and a CLI that calls
    process.exit() after printing (madge) loses everything past the pipe's 64 KiB."""
    with tempfile.TemporaryFile(mode="w+") as out:
        completed = subprocess.run(
            ["node", *args], cwd=cwd, stdout=out, stderr=subprocess.PIPE, text=True, check=False
        )
        out.seek(0)
        stdout = out.read()
    if completed.returncode not in (0, 1) or not stdout.strip():
        raise RuntimeError(f"{args[0]} failed: {completed.stderr[-1000:]}")
    return stdout


def dependency_cruiser(root: Path) -> set[tuple[str, str]]:
    script = node_modules_path() / "dependency-cruiser" / "bin" / "dependency-cruise.mjs"
    out = json.loads(
        _node(str(script), "--no-config", "--ts-pre-compilation-deps", "--ts-config", "tsconfig.json",
              "--output-type", "json", "src", cwd=root)
    )  # fmt: skip
    return {
        (module["source"], dep["resolved"])
        for module in out["modules"]
        for dep in module["dependencies"]
        if not dep["couldNotResolve"] and not dep["coreModule"]
    }


def madge(root: Path) -> set[tuple[str, str]]:
    script = node_modules_path() / "madge" / "bin" / "cli.js"
    out = json.loads(
        _node(
            str(script),
            "--ts-config",
            "tsconfig.json",
            "--extensions",
            "ts,tsx,js,mjs,cjs",
            "--json",
            "src",
            cwd=root,
        )
    )
    return {(f"src/{source}", f"src/{target}") for source, targets in out.items() for target in targets}


def ours_in_own_process(root: Path) -> None:
    code = "import sys; from pathlib import Path; from mge.adapters.deps_scan import analyze_folder; "
    code += "analyze_folder(Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", code, str(root)], check=True)


def _load() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def _interleaved(tools: dict[str, Callable[[], Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    """Each tool's last result and median wall time; the tools take turns, so a burst of load on the shared
    machine falls on all of them rather than on whichever happened to run then."""
    results: dict[str, Any] = {}
    times: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(RUNS):
        for name, run in tools.items():
            started = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - started)
    return results, {name: statistics.median(values) for name, values in times.items()}


def _score(
    found: set[tuple[str, str]], truth: set[tuple[str, str]], program: set[str]
) -> tuple[float, float]:
    judged = {pair for pair in found if pair[0] in program and pair[0] != pair[1]}
    precision = len(judged & truth) / len(judged) if judged else 1.0
    recall = len(judged & truth) / len(truth) if truth else 1.0
    return precision, recall


def main() -> None:
    accuracy_rows, time_rows = [], []
    print(f"load average (1 / 5 / 15 min) before: {_load()}")
    with tempfile.TemporaryDirectory(prefix="mge-bench-deps-") as scratch:
        for package in PACKAGES:
            root = _copy(package, Path(scratch))
            program, truth = tsc_edges(root)
            results, seconds = _interleaved(
                {
                    "ours": partial(analyze_folder, root),
                    "own process": partial(ours_in_own_process, root),
                    "cruiser": partial(dependency_cruiser, root),
                    "madge": partial(madge, root),
                }
            )
            ours = agreement(results["ours"], truth, program)
            cruiser, mad = results["cruiser"], results["madge"]
            ours_s, own_process_s = seconds["ours"], seconds["own process"]
            cruiser_s, madge_s = seconds["cruiser"], seconds["madge"]
            cruiser_p, cruiser_r = _score(cruiser, truth, program)
            madge_p, madge_r = _score(mad, truth, program)
            accuracy_rows.append(
                (package, len(program), len(truth), f"{ours.precision:.2%}", f"{ours.recall:.2%}",
                 len(ours.false_negative), len(ours.false_positive), f"{cruiser_p:.2%}", f"{cruiser_r:.2%}",
                 f"{madge_p:.2%}", f"{madge_r:.2%}")
            )  # fmt: skip
            time_rows.append(
                (package, f"{ours_s:.2f}", f"{own_process_s:.2f}", f"{cruiser_s:.2f}", f"{madge_s:.2f}",
                 f"{cruiser_s / ours_s:.2f}x", f"{cruiser_s / own_process_s:.2f}x", f"{madge_s / ours_s:.2f}x")
            )  # fmt: skip
            for source, target in sorted(ours.false_negative | ours.false_positive):
                kind = "missed" if (source, target) in ours.false_negative else "extra"
                print(f"  {package}: {kind} {source} -> {target}")
    print("Dependency edges vs tsc --explainFiles (precision / recall):")
    print_table(
        ("package", "files", "tsc edges", "ours P", "ours R", "missed", "extra", "cruiser P", "cruiser R",
         "madge P", "madge R"),
        accuracy_rows,
    )  # fmt: skip
    print(f"\nAnalysis time, median of {RUNS} interleaved runs (s); ratio = baseline time / ours:")
    print_table(
        ("package", "ours", "ours, own process", "dep-cruiser", "madge", "cruiser/ours",
         "cruiser/ours own process", "madge/ours"),
        time_rows,
    )  # fmt: skip
    print(f"load average (1 / 5 / 15 min) after: {_load()}")


if __name__ == "__main__":
    main()
