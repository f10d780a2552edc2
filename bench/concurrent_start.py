#!/usr/bin/env python3
"""The time a training spends outside its budget when several start at once on one host.

A population starts one training per GPU at nearly the same moment. This runs a train file N
times side by side (one per GPU, CUDA_VISIBLE_DEVICES=i), each for a short budget, and reports
what each spent outside the budget (startup, compile, evaluation) and its CPU seconds (the
process and every child it reaped: compile workers, the data loader).

    python bench/concurrent_start.py --gpus 4 --budget 3                  # four at once
    python bench/concurrent_start.py --gpus 1 --budget 3                  # one alone
    python bench/concurrent_start.py --gpus 4 --env TORCH_WARM_POOL=0     # a setting to compare
    python bench/concurrent_start.py --gpus 4 --population-env            # the environment a population gives
    python bench/concurrent_start.py --cpu --gpus 2 --budget 2            # smoke model on a CPU

Run it once first to warm the compile cache (the 2nd..Nth experiment of a population finds it
warm); the cache is AUTORESEARCH_CACHE's, as for every training.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from population.summary import parse_summary  # noqa: E402
from population.training import TrainJob, training_env  # noqa: E402

PHASES = ("startup_seconds", "compile_seconds", "eval_seconds")


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"error: --env {pair!r}: use NAME=VALUE")
        env[name] = value
    return env


def training_environment(index: int, args, extra_env: dict[str, str]) -> dict[str, str]:
    """This shell's environment, or with --population-env the one a population worker builds."""
    node_env = dict(os.environ, CUDA_VISIBLE_DEVICES="" if args.cpu else str(index))
    run_env = {name: value for name, value in os.environ.items() if name.startswith("AUTORESEARCH_")}
    run_env["AUTORESEARCH_TIME_BUDGET"] = str(args.budget)
    if args.cpu:
        run_env.update(AUTORESEARCH_SMOKE="1", AUTORESEARCH_DEVICE="cpu")
    if args.population_env:
        job = TrainJob(exp_id=index, worktree=str(REPO), train_file=str(args.train_file), env=run_env,
                       timeout_s=0, log_path="", device="cpu" if args.cpu else "cuda")
        env = training_env(job, node_env)
    else:
        env = dict(node_env, **run_env, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.update(extra_env)
    return env


def launch(index: int, args, extra_env: dict[str, str], log_dir: Path):
    env = training_environment(index, args, extra_env)
    log_path = log_dir / f"run{index}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(args.train_file)], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, log, log_path


def reap(proc) -> tuple[int, float]:
    """Exit code and CPU seconds (user + system) of the process and the children it reaped."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def run_batch(args, extra_env: dict[str, str]) -> list[dict]:
    log_dir = Path(tempfile.mkdtemp(prefix="concurrent_start_"))
    t0 = time.perf_counter()
    launched = [launch(i, args, extra_env, log_dir) for i in range(args.gpus)]
    rows = []
    for index, (proc, log, log_path) in enumerate(launched):
        code, cpu_seconds = reap(proc)
        wall = time.perf_counter() - t0  # upper bound for the later ones: they are reaped in order
        log.close()
        text = log_path.read_text(errors="replace")
        summary = parse_summary(text)
        row = {"run": index, "exit": code, "cpu_seconds": round(cpu_seconds, 1), "log": str(log_path)}
        if summary:
            row.update({k: summary.get(k) for k in (*PHASES, "training_seconds", "total_seconds")})
            row["outside_seconds"] = round(summary["total_seconds"] - summary["training_seconds"], 1)
        else:
            row["error"] = text.strip().splitlines()[-1] if text.strip() else "no output"
            row["wall_seconds"] = round(wall, 1)
        rows.append(row)
    return rows


def median_of(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=1, help="trainings started at once (one per GPU)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of training each")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for every training (repeatable)")
    parser.add_argument("--label", default="", help="name of this setting in the output")
    parser.add_argument("--train-file", type=Path, default=REPO / "engine" / "train.py")
    parser.add_argument("--population-env", action="store_true",
                        help="start each training with the environment a population worker gives it")
    parser.add_argument("--cpu", action="store_true", help="the smoke model on a CPU (checks the script)")
    parser.add_argument("--json", type=Path, help="append the result as one JSON line here")
    args = parser.parse_args(argv)
    if args.gpus < 1:
        parser.error("--gpus must be at least 1")
    extra_env = parse_env(args.env)
    if args.population_env:
        dropped = sorted(set(os.environ) - set(training_environment(0, args, extra_env)))
        print(f"population environment: leaves out {', '.join(dropped) or 'nothing'} of this shell's")
    rows = run_batch(args, extra_env)
    label = args.label or (" ".join(args.env) or "default")
    print(f"{label}: {args.gpus} at once, budget {args.budget:g} s")
    print(f"{'run':>3} {'exit':>4} {'startup':>8} {'compile':>8} {'eval':>6} {'outside':>8} {'cpu s':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['run']:>3} {r['exit']:>4}  no summary: {r['error']}  (log {r['log']})")
            continue
        print(f"{r['run']:>3} {r['exit']:>4} {r['startup_seconds']:>8.1f} {r['compile_seconds']:>8.1f} "
              f"{r['eval_seconds']:>6.1f} {r['outside_seconds']:>8.1f} {r['cpu_seconds']:>7.1f}")
    medians = {key: median_of(rows, key) for key in (*PHASES, "outside_seconds", "cpu_seconds")}
    print("median " + "  ".join(f"{k.replace('_seconds', '')} {v:.1f}" for k, v in medians.items()))
    if args.json:
        with open(args.json, "a") as out:
            out.write(json.dumps({"label": label, "gpus": args.gpus, "budget": args.budget,
                                  "env": extra_env, "runs": rows, "median": medians}) + "\n")
    return 0 if all(r["exit"] == 0 and "error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
