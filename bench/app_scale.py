"""How the lineage browser scales: data prep, figures and whole-page runs on a large fake store.

    python bench/app_scale.py [--rows 10000] [--repeat 3]

Writes a store with tests/storegen.py into a temporary directory, times each data-prep function
of population/lineage_view.py and each figure of population/lineage_charts.py (median of
--repeat), then the whole page with Streamlit's AppTest: the first run (cold caches), a rerun
(warm caches) and selecting another experiment. Prints a Markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tqdm import tqdm  # noqa: E402

from population import lineage_charts as charts  # noqa: E402
from population import lineage_view as lv  # noqa: E402
from storegen import make_run  # noqa: E402


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of `repeat` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_data(run_dir: Path, repeat: int) -> list[tuple[str, float, str]]:
    rows = []
    seconds, run = timed(lambda: lv.load_run(run_dir), repeat)
    rows.append(("load_run (parquet + run.json + events tail)", seconds, f"{len(run.frame):,} rows"))
    frame, metric = run.frame, run.metric
    seconds, layout = timed(lambda: lv.tree_layout(frame, metric, True, "time"), repeat)
    nodes, edge_x, edge_y = layout
    rows.append(("tree_layout (x = time)", seconds, f"{len(edge_x) // 3:,} edges"))
    seconds, _ = timed(lambda: lv.tree_layout(frame, metric, True, "generation"), repeat)
    rows.append(("tree_layout (x = generation)", seconds, ""))
    seconds, champion = timed(lambda: lv.champion_id(frame, run.meta, metric, True), repeat)
    rows.append(("champion_id", seconds, f"#{champion}"))
    seconds, path = timed(lambda: lv.ancestry(frame, champion), repeat)
    rows.append(("ancestry (champion's path)", seconds, f"{len(path):,} nodes"))
    seconds, _ = timed(lambda: lv.running_best(frame, metric, True), repeat)
    rows.append(("running_best", seconds, ""))
    seconds, _ = timed(lambda: lv.run_totals(frame, metric, True), repeat)
    rows.append(("run_totals", seconds, ""))
    seconds, mask = timed(lambda: lv.filter_mask(frame, ["ok"], text="lr"), repeat)
    rows.append(("filter_mask (status + text)", seconds, f"{int(mask.sum()):,} match"))
    seconds, _ = timed(lambda: lv.children_of(frame, champion), repeat)
    rows.append(("children_of", seconds, ""))
    path_x, path_y = lv.path_line(nodes, path)
    seconds, built = timed(lambda: charts.tree_figure(nodes, edge_x, edge_y, path_x, path_y, metric,
                                                      True, "hours", selected_id=champion), repeat)
    rows.append(("tree_figure (Scattergl)", seconds, f"{len(built[0].data)} traces"))
    seconds, progress = timed(lambda: charts.progress_figure(frame, metric, True), repeat)
    rows.append(("progress_figure", seconds, ""))
    seconds, spec = timed(lambda: built[0].to_json(), repeat)
    rows.append(("tree figure to JSON", seconds, f"{len(spec) / 1e6:.2f} MB"))
    return rows


def bench_page(runs_dir: Path, select_id: int) -> list[tuple[str, float, str]]:
    import os

    from streamlit.testing.v1 import AppTest

    os.environ["AUTORESEARCH_RUNS"] = str(runs_dir)
    sys.argv = ["app.py"]
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    rows = []
    start = time.perf_counter()
    at.run()
    rows.append(("AppTest first run (cold caches)", time.perf_counter() - start, _status(at)))
    start = time.perf_counter()
    at.run()
    rows.append(("AppTest rerun (warm caches)", time.perf_counter() - start, _status(at)))
    start = time.perf_counter()
    at.number_input(key="selected_id").set_value(select_id).run()
    rows.append((f"AppTest select experiment #{select_id}", time.perf_counter() - start, _status(at)))
    for tab in (":material/show_chart: Progress", ":material/table: Experiments"):
        at.session_state["view"] = tab
        start = time.perf_counter()
        at.run()
        rows.append((f"AppTest open the {tab.split()[-1]} tab", time.perf_counter() - start, _status(at)))
    start = time.perf_counter()
    at.multiselect(key="f_status").set_value(["crash"]).run()
    rows.append(("AppTest filter the table (status = crash)", time.perf_counter() - start, _status(at)))
    return rows


def _status(at) -> str:
    return f"{len(at.exception)} exceptions" if at.exception else "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="experiments in the fake store")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per function (median)")
    args = parser.parse_args(argv)
    if args.rows < 10 or args.repeat < 1:
        print("error: --rows must be >= 10 and --repeat >= 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp)
        start = time.perf_counter()
        make_run(runs_dir / "scale", n=args.rows, files_for=50)
        print(f"wrote a {args.rows:,}-row store in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        results = []
        for part in tqdm(("data", "page"), desc="benchmark", file=sys.stderr):
            if part == "data":
                results += bench_data(runs_dir / "scale", args.repeat)
            else:
                results += bench_page(runs_dir, select_id=7)
    print(f"\n| step ({args.rows:,} experiments) | seconds | note |\n| --- | ---: | --- |")
    for name, seconds, note in results:
        print(f"| {name} | {seconds:.3f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
