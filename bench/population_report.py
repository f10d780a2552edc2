"""Figures of one population run, read from its journal: throughput, GPU occupancy, overheads.

    python bench/population_report.py runs/<tag> [--json out.json]

Per GPU (CUDA_VISIBLE_DEVICES of each training, per node) it reports the fraction of the wall time
that GPU was training (from the first training's start to the last one's end: "warm" excludes the
first round), the most trainings that ever overlapped on it (must be 1), and for the run the
experiments per GPU-hour and the mean overhead of one experiment outside its training budget
(startup, compile, evaluation from the train file's own summary lines; agent seconds; the rest of the
training subprocess's wall time). Only the journal is read, so it works on a live or a killed run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


EXTRA_KEYS = ("startup_seconds", "compile_seconds", "eval_seconds", "step_ms_p10", "step_ms_p50", "step_ms_p90")


def finished_rows(run_dir: Path) -> list[dict]:
    """Finished rows of the journal, with the train file's extra summary lines read from each run.log."""
    from population.summary import parse_summary

    rows = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line
        if event.get("type") == "experiment_finished":
            row = dict(event["row"])
            log = run_dir / "experiments" / str(int(event["id"])) / "run.log"
            if log.is_file():
                row.update(parse_summary(log.read_text(errors="replace"), EXTRA_KEYS))
            rows.append(row)
    return rows


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda p: (p[0], p[1]))
    live = peak = 0
    for _, step in points:
        live += step
        peak = max(peak, live)
    return peak


def mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and v == v]
    return statistics.fmean(values) if values else float("nan")


def report(run_dir: Path) -> dict:
    rows = [r for r in finished_rows(run_dir)
            if r.get("train_started_at") is not None and r.get("train_seconds") is not None]
    if not rows:
        raise SystemExit(f"{run_dir}: no finished trainings in events.jsonl")
    by_gpu: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        start = r["train_started_at"]
        by_gpu[f"{r.get('node', '?')}:{r.get('cuda_visible_devices', '?')}"].append((start, start + r["train_seconds"]))
    t0 = min(a for iv in by_gpu.values() for a, _ in iv)
    t1 = max(b for iv in by_gpu.values() for _, b in iv)
    wall = t1 - t0
    # "warm": from the end of each GPU's first training (compile caches filled, noise round done)
    gpus = {}
    for gpu, iv in sorted(by_gpu.items()):
        iv.sort()
        warm_start = iv[0][1]
        warm = [(max(a, warm_start), b) for a, b in iv[1:]]
        gpus[gpu] = {
            "trainings": len(iv),
            "busy_fraction": union_seconds(iv) / wall,
            "busy_fraction_warm": union_seconds(warm) / (t1 - warm_start) if t1 > warm_start and warm else float("nan"),
            "max_overlap": max_overlap(iv),
        }
    n_gpus = len(gpus)
    outside = [r["total_seconds"] - r["training_seconds"] for r in rows
               if r.get("total_seconds") is not None and r.get("training_seconds") is not None]
    return {
        "run": str(run_dir),
        "experiments": len(rows),
        "ok": sum(r.get("status") == "ok" for r in rows),
        "gpus": gpus,
        "wall_seconds": wall,
        "experiments_per_gpu_hour": len(rows) / (wall * n_gpus / 3600),
        "budget_s": mean([r.get("budget_s") for r in rows]),
        "mean_train_subprocess_seconds": mean([r["train_seconds"] for r in rows]),
        "mean_outside_budget_seconds": mean(outside),
        "mean_startup_seconds": mean([r.get("startup_seconds") for r in rows]),
        "mean_compile_seconds": mean([r.get("compile_seconds") for r in rows]),
        "mean_eval_seconds": mean([r.get("eval_seconds") for r in rows]),
        "mean_agent_seconds": mean([r.get("agent_seconds") for r in rows]),
        "statuses": {s: sum(r.get("status") == s for r in rows) for s in {r.get("status") for r in rows}},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if not (args.run_dir / "events.jsonl").is_file():
        print(f"error: {args.run_dir} has no events.jsonl (not a run directory)", file=sys.stderr)
        return 2
    out = report(args.run_dir)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(f"| GPU | trainings | busy (all) | busy (warm) | max overlap |\n| --- | ---: | ---: | ---: | ---: |")
    for gpu, g in out["gpus"].items():
        print(f"| {gpu} | {g['trainings']} | {g['busy_fraction']:.1%} | {g['busy_fraction_warm']:.1%} | {g['max_overlap']} |")
    print()
    for key in ("experiments", "ok", "statuses", "wall_seconds", "experiments_per_gpu_hour", "budget_s",
                "mean_train_subprocess_seconds", "mean_outside_budget_seconds", "mean_startup_seconds",
                "mean_compile_seconds", "mean_eval_seconds", "mean_agent_seconds"):
        value = out[key]
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
