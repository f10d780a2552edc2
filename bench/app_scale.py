"""How the lineage browser scales: data prep, figures, and whole page loads in a real browser.

    python bench/app_scale.py [--rows 3000] [--repeat 3] [--source storegen|simulate] [--cores 0,1]
                              [--no-browser] [--watcher]

Writes a store into a temporary directory (tests/storegen.py, the driver's journal and tables; or
`--source simulate`: bench/simulate.py, the real driver against simulated workers), then:
- times each step of the data prep (population/lineage_view.py) and each figure
  (population/lineage_charts.py), median of --repeat;
- page loads in Chromium against `streamlit run app.py` pinned to --cores (2 by default): the
  server's CPU seconds (utime + stime of the server process, /proc) and the wall time until the
  page shows the tree and the details panel, for a cold first load, a second browser session
  (warm caches), a live refresh after the store grew, and opening the Progress and Experiments
  tabs. `--watcher` also measures a cold load with Streamlit's file watcher on (the default
  outside this repository's .streamlit/config.toml).
Prints Markdown tables for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from population import lineage_charts as charts  # noqa: E402
from population import lineage_view as lv  # noqa: E402
from population.store import RunStore  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
TICKS = os.sysconf("SC_CLK_TCK")
REFRESH_S = 10           # the app's default live refresh


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of `repeat` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# --------------------------------------------------------------------------- stores

def make_store(runs_dir: Path, rows: int, source: str) -> Path:
    """A run of `rows` experiments under runs_dir/scale."""
    if source == "simulate":
        import simulate
        sim = simulate.Simulation(workers=16, experiments=rows, budget_s=300.0, population_size=16,
                                  progress_bar=False)
        outcome = simulate.simulate(sim, runs_dir, tag="scale")
        if outcome.code != 0:
            raise SystemExit(f"app_scale: the simulated driver exited with {outcome.code}")
        return runs_dir / "scale"
    from storegen import make_run
    return make_run(runs_dir / "scale", n=rows, files_for=200, state="running")     # live: the page refreshes


def grow(run_dir: Path, rows: int, source: str) -> None:
    """The store as a live run sees it a little later: 50 more experiments. Written aside, then each
    file moved in (os.replace), so the page reads the old store or the new one, not a half-written one."""
    if source == "simulate":                 # a simulated run cannot be continued: touch it instead
        os.utime(run_dir / "events.jsonl")
        return
    from storegen import make_run
    aside = make_run(run_dir.parent / ".grow" / run_dir.name, n=rows + 50, files_for=200, state="running")
    for name in (".journal.key", "events.jsonl", "lineage.parquet", "results.tsv", "run.json"):
        os.replace(aside / name, run_dir / name)
    shutil.rmtree(aside.parent, ignore_errors=True)


# --------------------------------------------------------------------------- in process

def bench_data(run_dir: Path, repeat: int) -> list[tuple[str, float, str]]:
    rows = []
    seconds, run = timed(lambda: lv.load_run(run_dir), repeat)
    rows.append(("load_run (parquet, run.json, journal verified and replayed)", seconds,
                 f"{len(run.frame):,} rows, {len(run.selection.members):,} members"))
    seconds, events = timed(lambda: RunStore(run_dir).events(), repeat)
    rows.append(("  of which: the journal read and verified (RunStore.events)", seconds, f"{len(events):,} events"))
    seconds, _ = timed(lambda: lv.replay_selection(events, run.metric, run.lower_is_better), repeat)
    rows.append(("  of which: the replay (PopulationState + posterior)", seconds,
                 f"{len(run.selection.promotions)} promotions"))
    sel, frame, metric = run.selection, run.frame, run.metric
    seconds, _ = timed(lambda: lv.headline(run), repeat)
    rows.append(("headline (champion, seed, best run, counts)", seconds, ""))
    for scope in ("living", "all"):
        seconds, layout = timed(lambda: lv.tree_layout(sel.members, frame, sel.champion, scope), repeat)
        rows.append((f"tree_layout ({scope})", seconds, f"{len(layout.nodes):,} nodes, {len(layout.ticks):,} ticks"))
        seconds, built = timed(lambda: charts.tree_figure(layout, metric, True, "generation", selected=sel.champion),
                               repeat)
        rows.append((f"tree_figure ({scope})", seconds, f"{len(built[0].to_json()) / 1e6:.2f} MB of JSON"))
    seconds, promotions = timed(lambda: lv.promotion_table(run), repeat)
    seconds_fig, fig = timed(lambda: charts.progress_figure(frame, promotions, metric, True, run.holdout), repeat)
    rows.append(("progress_figure (promotion staircase)", seconds + seconds_fig, f"{len(fig.to_json()) / 1e6:.2f} MB"))
    seconds, _ = timed(lambda: charts.throughput_figure(lv.training_spans(frame), lv.agent_cost_over_time(frame)),
                       repeat)
    rows.append(("throughput_figure", seconds, ""))
    seconds, _ = timed(lambda: lv.sort_rows(frame[lv.filter_mask(frame, ["ok"], text="lr")],
                                            f"{metric}, best first", metric, True), repeat)
    rows.append(("filter_mask + sort_rows", seconds, ""))
    return rows


# --------------------------------------------------------------------------- in a browser

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Server:
    """`streamlit run app.py` on loopback serving `runs_dir` (pinned to `cores` when given), ready
    once its health check answers; tests/test_app_browser.py serves its stores with it too."""

    def __init__(self, runs_dir: Path, log: Path, cores: set[int] | None = None, watcher: bool = False,
                 refresh_s: float = REFRESH_S, env: dict | None = None, timeout_s: float = 120):
        import requests
        self.port = free_port()
        args = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(self.port),
                "--server.headless", "true"] + (["--server.fileWatcherType", "auto"] if watcher else [])
        self.log_path, self.log = log, open(log, "w")
        self.proc = subprocess.Popen(args + ["--", "--runs-dir", str(runs_dir)], cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
                                     env={**os.environ, "AUTORESEARCH_APP_REFRESH_S": str(refresh_s), **(env or {})})
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + timeout_s
        while True:
            try:
                if requests.get(f"{self.url}/_stcore/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise RuntimeError("streamlit did not start:\n" + log.read_text()[-2000:])
            time.sleep(0.3)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _idle(server: Server, quiet_s: float = 0.6, limit_s: float = 60.0) -> None:
    """Wait until the server has spent no CPU for `quiet_s` (its script run is over)."""
    deadline = time.time() + limit_s
    last, since = server.cpu(), time.time()
    while time.time() < deadline:
        time.sleep(0.2)
        now = server.cpu()
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= quiet_s:
            return


def _drawn(page, timeout_ms: float = 300_000) -> None:
    page.locator(".st-key-details h3").first.wait_for(timeout=timeout_ms)
    page.locator(".js-plotly-plot .scatterlayer").first.wait_for(timeout=timeout_ms)


def measure(server: Server, action, quiet_s: float = 0.6) -> tuple[float, float]:
    """(wall seconds until `action` returns, server CPU seconds until the server is idle again)."""
    _idle(server)
    cpu0, start = server.cpu(), time.perf_counter()
    action()
    wall = time.perf_counter() - start
    _idle(server, quiet_s)
    return wall, server.cpu() - cpu0                       # the idle wait itself costs no CPU


def bench_browser(runs_dir: Path, run_dir: Path, rows: int, source: str, cores: set[int],
                  watcher: bool, work: Path) -> list[tuple[str, float, float, str]]:
    from playwright.sync_api import sync_playwright

    results = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            for with_watcher in ([False, True] if watcher else [False]):
                server = Server(runs_dir, work / f"streamlit-{with_watcher}.log", cores, with_watcher)
                time.sleep(1.0)              # let the server settle before the first measured load
                try:
                    label = " (file watcher on)" if with_watcher else ""
                    page = browser.new_page(viewport={"width": 1440, "height": 1000})
                    wall, cpu = measure(server, lambda: (page.goto(server.url), _drawn(page)))
                    results.append((f"first page load, cold caches{label}", wall, cpu, ""))
                    if with_watcher:
                        continue
                    second = browser.new_page(viewport={"width": 1440, "height": 1000})
                    wall, cpu = measure(server, lambda: (second.goto(server.url), _drawn(second)))
                    results.append(("another session's page load, warm caches", wall, cpu, ""))
                    second.close()
                    shown = {"Progress": "[class*='st-key-zoom_progress'] .js-plotly-plot .scatterlayer",
                             "Experiments": "[data-testid='stDataFrame']",
                             "Throughput": "[class*='st-key-zoom_throughput'] .js-plotly-plot .scatterlayer"}
                    for tab, drawn in shown.items():
                        wall, cpu = measure(server, lambda: (page.get_by_role("tab", name=tab).click(),
                                                             page.locator(drawn).first.wait_for(timeout=300_000)))
                        results.append((f"open the {tab} tab", wall, cpu, ""))
                    page.get_by_role("tab", name="Lineage tree").click()
                    _drawn(page)
                    # a live page reruns every REFRESH_S; with nothing new, what does one rerun cost?
                    _idle(server, quiet_s=0.3)
                    cpu0 = server.cpu()
                    time.sleep(3 * REFRESH_S)
                    results.append(("a live refresh with nothing new (one rerun, mean of 3)", math.nan,
                                    (server.cpu() - cpu0) / 3, f"every {REFRESH_S} s"))
                    if source == "storegen":
                        def live_refresh():
                            grow(run_dir, rows, source)
                            page.locator("[data-testid='stMetric']").filter(has_text="Experiments") \
                                .filter(has_text=f"{rows + 50:,}").wait_for(timeout=300_000)
                        _, cpu = measure(server, live_refresh, quiet_s=1.5)
                        results.append(("a live refresh after 50 new experiments (re-read, replay, redraw)",
                                        math.nan, cpu, "wall: up to the refresh period"))
                    page.close()
                finally:
                    server.close()
        finally:
            browser.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000, help="experiments in the store")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per function (median)")
    parser.add_argument("--source", choices=("storegen", "simulate"), default="storegen",
                        help="tests/storegen.py (fast) or bench/simulate.py (the real driver, simulated workers)")
    parser.add_argument("--cores", default="0,1", help="CPUs the server is pinned to (default: two)")
    parser.add_argument("--no-browser", action="store_true", help="only the in-process timings")
    parser.add_argument("--watcher", action="store_true", help="also a cold load with the file watcher on")
    args = parser.parse_args(argv)
    cores = {int(c) for c in args.cores.split(",") if c.strip()}
    if args.rows < 10 or args.repeat < 1 or not cores <= os.sched_getaffinity(0):
        print("error: --rows must be >= 10, --repeat >= 1 and --cores CPUs this process may use", file=sys.stderr)
        return 2
    if not args.no_browser and not Path(CHROMIUM).exists():
        print(f"error: no {CHROMIUM}; pass --no-browser", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="app-scale-"))
    try:
        runs_dir = work / "runs"
        start = time.perf_counter()
        run_dir = make_store(runs_dir, args.rows, args.source)
        print(f"wrote a {args.rows:,}-experiment store ({args.source}) in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)
        data = bench_data(run_dir, args.repeat)
        print(f"\n| step ({args.rows:,} experiments, {args.source}) | seconds | note |\n| --- | ---: | --- |")
        for name, seconds, note in data:
            print(f"| {name} | {seconds:.3f} | {note} |")
        if not args.no_browser:
            pages = bench_browser(runs_dir, run_dir, args.rows, args.source, cores, args.watcher, work)
            print(f"\n| page ({args.rows:,} experiments; server pinned to CPUs {args.cores}) | wall s | "
                  "server CPU s | note |\n| --- | ---: | ---: | --- |")
            for name, wall, cpu, note in pages:
                print(f"| {name} | {'—' if math.isnan(wall) else f'{wall:.2f}'} | {cpu:.2f} | {note} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
