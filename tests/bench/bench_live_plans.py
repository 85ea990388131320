"""Many live Masterplans on one operator replica: the real `mge operator` process against the fake API server.

The operator runs as its own process (its RSS is its own), logged in through a kubeconfig; real Postgres.
Measured, each beside its baseline:
- plans planned per second (baseline: `tests/bench/bench_reconcile.py`'s direct API writes, the floor);
- status lag: every atom of every plan is marked succeeded in Postgres at once (as executors would), then the
  time until each Masterplan's status shows it, p50/p95/max (baseline: the progress interval, 10 s; goal 15 s);
- the operator's RSS idle, after planning, and its peak (goal <= 300 MB);
- API writes while nothing changes (goal 0), once the finished plans' last writes are done.

MGE_BENCH_PLANS and MGE_BENCH_ATOMS set the size (default 1,000 x 100: the 100,000 atoms of the goal).
"""

import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import yaml

from tests.bench.common import fresh_database, layered_atoms, print_table
from tests.support.operator import fake_cluster
from tests.support.postgres import postgres_server

REPO = Path(__file__).resolve().parents[2]
NS = "bench"
BASE = f"/apis/mge.devmatrix.io/v1alpha1/namespaces/{NS}"
PLANS = int(os.environ.get("MGE_BENCH_PLANS", "1000"))
ATOMS = int(os.environ.get("MGE_BENCH_ATOMS", "100"))
PROGRESS_INTERVAL_S = 10.0
GOAL_LAG_S = 15.0
GOAL_RSS_MB = 300.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of the process, in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _kubeconfig(folder: Path, url: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "bench", "user": {"token": "bench"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "bench", "namespace": NS}}],
        "current-context": "fake",
    }
    path = folder / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def _manifest(index: int) -> dict:
    atoms = [a.to_kube() for a in layered_atoms(ATOMS, width=10, seed=index)]
    return {
        "apiVersion": "mge.devmatrix.io/v1alpha1",
        "kind": "Masterplan",
        "metadata": {"name": f"plan-{index}", "namespace": NS},
        "spec": {"atoms": atoms, "budget": {"limitUSD": 50}},
    }


def _planned(api) -> int:
    return sum(
        1
        for status in api.statuses_of("masterplans", NS).values()
        if any(c["type"] == "Planned" and c["status"] == "True" for c in status.get("conditions", []))
    )


async def _until(check, timeout: float, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("the benchmark did not reach the state it measures within its time limit")
        await asyncio.sleep(interval)


async def run() -> None:
    with postgres_server() as server, tempfile.TemporaryDirectory() as tmp:
        async with fake_cluster() as api, fresh_database(server) as dsn:
            environment = {
                **os.environ,
                "PYTHONPATH": str(REPO / "operator"),
                "KUBECONFIG": str(_kubeconfig(Path(tmp), str(api.url))),
                "MGE_DATABASE_URL": dsn,
                "MGE_WATCH_NAMESPACES": NS,
                "MGE_METRICS_PORT": str(_free_port()),
                "MGE_HEALTH_PORT": str(_free_port()),
                "MGE_LOG_LEVEL": "WARNING",
            }
            # MGE_BENCH_OPERATOR_LOG=<file> keeps the operator's log (at INFO: each slow tick's duration).
            log_path = os.environ.get("MGE_BENCH_OPERATOR_LOG")
            if log_path:
                environment["MGE_LOG_LEVEL"] = "INFO"
            log_file = open(log_path, "w") if log_path else asyncio.subprocess.DEVNULL  # noqa: ASYNC230, SIM115
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mge.cli", "operator",
                env=environment, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            try:
                await asyncio.sleep(5)
                if process.returncode is not None:
                    raise SystemExit(f"the operator exited with {process.returncode}")
                idle_mb, _ = _memory_mb(process.pid)
                async with httpx.AsyncClient(base_url=str(api.url), timeout=60) as client:
                    started = time.perf_counter()
                    for index in range(PLANS):
                        (await client.post(f"{BASE}/masterplans", json=_manifest(index))).raise_for_status()
                    await _until(lambda: _planned(api) == PLANS, timeout=3600, interval=1.0)
                    planned_per_s = PLANS / (time.perf_counter() - started)
                planned_mb, _ = _memory_mb(process.pid)
                # Every atom succeeds at once in Postgres, as if executors had finished the whole fleet.
                connection = await asyncpg.connect(dsn)
                try:
                    await connection.execute(
                        "UPDATE atoms SET state = 'succeeded', output = 'VALUE = 1', updated_at = now()"
                    )
                finally:
                    await connection.close()
                marked = time.monotonic()
                lags: dict[str, float] = {}

                def caught_up() -> bool:
                    for name, status in api.statuses_of("masterplans", NS).items():
                        if name not in lags and (status.get("atoms") or {}).get("succeeded") == ATOMS:
                            lags[name] = time.monotonic() - marked
                    return len(lags) == PLANS

                await _until(caught_up, timeout=1800, interval=0.5)
                # The finished runs' last writes (Waves, imports checked, Events): until two ticks write nothing.
                while True:
                    writes = api.writes
                    await asyncio.sleep(2 * PROGRESS_INTERVAL_S)
                    if api.writes == writes:
                        break
                    if time.monotonic() - marked > 3600:
                        raise SystemExit("the finished plans were still being written an hour later")
                quiet_after = time.monotonic() - marked
                writes = api.writes
                await asyncio.sleep(3 * PROGRESS_INTERVAL_S)
                idle_writes = api.writes - writes
                final_mb, peak_mb = _memory_mb(process.pid)
            finally:
                process.terminate()
                await process.wait()
    ordered = sorted(lags.values())
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    print(f"\n{PLANS:,} Masterplans x {ATOMS} atoms ({PLANS * ATOMS:,} atoms) on one `mge operator` process")
    print_table(
        ("measure", "ours", "baseline", "goal", "met"),
        [
            ("plans planned per s", f"{planned_per_s:.1f}", "see bench_reconcile (direct writes)", "-", "-"),
            (
                "status lag p50 / p95 / max s",
                f"{statistics.median(ordered):.1f} / {p95:.1f} / {ordered[-1]:.1f}",
                f"progress interval {PROGRESS_INTERVAL_S:.0f}",
                f"p95 <= {GOAL_LAG_S:.0f}",
                "yes" if p95 <= GOAL_LAG_S else "NO",
            ),
            (
                "RSS MB planned / end / peak",
                f"{planned_mb:.0f} / {final_mb:.0f} / {peak_mb:.0f}",
                f"{idle_mb:.0f} idle",
                f"<= {GOAL_RSS_MB:.0f}",
                "yes" if peak_mb <= GOAL_RSS_MB else "NO",
            ),
            ("last write after the marking s", f"{quiet_after:.0f}", "-", "-", "-"),
            ("API writes in 30 s of no change", idle_writes, "-", "0", "yes" if idle_writes == 0 else "NO"),
        ],
    )


if __name__ == "__main__":
    asyncio.run(run())
