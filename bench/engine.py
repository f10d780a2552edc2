#!/usr/bin/env python3
"""Benchmark a train file: run it as the population driver does, parse its summary, print a table.

    python bench/engine.py --budget 300 --attention flex sdpa --out bench/engine.json
    python bench/engine.py --budget 300 --repeat 2 --cold        # 1st run cold compile, 2nd warm
    python bench/engine.py --train-file ../autoresearch/train.py  # any file that prints the block

Each run is `python <train file>` with the repository on PYTHONPATH and AUTORESEARCH_TIME_BUDGET
(and AUTORESEARCH_ATTENTION unless `auto`) set; its output goes to a log file. Step times come
from the summary's step_ms_* keys, or, for a file that lacks them (the reference), from the
`dt: NNNms` of its per-step lines after the 11 untimed steps. Needs only the standard library
(tqdm for the progress bar when installed). See bench/README.md.
"""
from __future__ import annotations

import argparse
import codecs
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRAIN_FILE = REPO / "engine" / "train.py"
UNTIMED_STEPS = 11
STEP_LINE = re.compile(r"step (\d+) \(([\d.]+)%\).*?dt: (\d+)ms")
COLUMNS = [  # (header, key, format)
    ("attention", "attention", "{}"), ("rc", "returncode", "{}"), ("val_bpb", "val_bpb", "{:.4f}"),
    ("steps", "num_steps", "{:.0f}"), ("tokens_M", "total_tokens_M", "{:.1f}"), ("mfu%", "mfu_percent", "{:.1f}"),
    ("p10_ms", "step_ms_p10", "{:.0f}"), ("p50_ms", "step_ms_p50", "{:.0f}"), ("p90_ms", "step_ms_p90", "{:.0f}"),
    ("p90/p10", "step_p90_over_p10", "{:.2f}"), ("train_s", "training_seconds", "{:.1f}"),
    ("outside_s", "outside_budget_seconds", "{:.1f}"), ("startup_s", "startup_seconds", "{:.1f}"),
    ("compile_s", "compile_seconds", "{:.1f}"), ("eval_s", "eval_seconds", "{:.1f}"),
    ("vram_GB", "peak_vram_gb", "{:.1f}"), ("wall_s", "wall_seconds", "{:.1f}"),
]


def parse_summary(text: str) -> dict[str, float | str]:
    """`key: value` lines after the last `---` line; numbers as floats, anything else as text."""
    lines = text.replace("\r", "\n").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    found: dict[str, float | str] = {}
    for line in lines[starts[-1] + 1:] if starts else []:
        key, sep, value = line.partition(":")
        if sep and key.strip() and " " not in key.strip():
            try:
                found[key.strip()] = float(value)
            except ValueError:
                found[key.strip()] = value.strip()
    return found


def step_times_from_log(text: str) -> list[float]:
    """Milliseconds of each timed step, from the per-step progress lines (last line per step)."""
    by_step = {int(m[1]): float(m[3]) for m in STEP_LINE.finditer(text)}
    return [ms for step, ms in sorted(by_step.items()) if step >= UNTIMED_STEPS]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def derived(metrics: dict, log_text: str) -> dict:
    """Fill in step percentiles from the log when the file does not print them, and ratios."""
    out = dict(metrics)
    times = None
    for q in (10, 50, 90):
        if f"step_ms_p{q}" not in out:
            times = step_times_from_log(log_text) if times is None else times
            out[f"step_ms_p{q}"] = percentile(times, q)
    p10, p90 = out.get("step_ms_p10", math.nan), out.get("step_ms_p90", math.nan)
    out["step_p90_over_p10"] = p90 / p10 if isinstance(p10, float) and p10 > 0 else math.nan
    if isinstance(out.get("total_seconds"), float) and isinstance(out.get("training_seconds"), float):
        out["outside_budget_seconds"] = out["total_seconds"] - out["training_seconds"]
    if isinstance(out.get("peak_vram_mb"), float):
        out["peak_vram_gb"] = out["peak_vram_mb"] / 1024
    return out


def gpu_name() -> str:
    if not shutil.which("nvidia-smi"):
        return "unknown (no nvidia-smi)"
    result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                            text=True)
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else "unknown"


def run_once(train_file: Path, budget: float, attention: str, log_path: Path, timeout: float,
             extra_env: dict[str, str]) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", AUTORESEARCH_TIME_BUDGET=f"{budget:g}", **extra_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env.pop("AUTORESEARCH_ATTENTION", None)
    if attention != "auto":
        env["AUTORESEARCH_ATTENTION"] = attention
    bar = _progress_bar(f"{attention} {log_path.stem}")
    t0 = time.time()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(train_file)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        watchdog = threading.Timer(timeout, process.kill)   # a silent hang must not block the bench
        watchdog.start()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        chunks: list[str] = []
        try:
            for raw in iter(lambda: process.stdout.read1(4096), b""):   # whatever is there, \r kept
                chunk = decoder.decode(raw)
                chunks.append(chunk)
                log.write(chunk)
                progress = re.findall(r"\(([\d.]+)%\)", chunk)
                if bar is not None and progress:
                    bar.n = float(progress[-1])
                    bar.refresh()
            returncode = process.wait()
        finally:
            watchdog.cancel()
            if bar is not None:
                bar.close()
    wall_seconds = time.time() - t0
    text = "".join(chunks)
    metrics = derived(parse_summary(text), text)
    metrics.setdefault("attention", attention)
    metrics.update(returncode=returncode, wall_seconds=wall_seconds, log=str(log_path),
                   timed_out=wall_seconds >= timeout)
    if returncode != 0:
        metrics["error_tail"] = text.replace("\r", "\n").strip().splitlines()[-5:]
    return metrics


def _progress_bar(description: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=100.0, desc=description, unit="%", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}% [{elapsed}]")


def _nan_to_none(value):
    """Strict JSON has no NaN: unknown numbers become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def format_table(runs: list[dict]) -> str:
    headers = ["run"] + [h for h, _, _ in COLUMNS]
    rows = []
    for i, run in enumerate(runs, 1):
        row = [str(i)]
        for _, key, fmt in COLUMNS:
            value = run.get(key)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                row.append("-")
            else:
                row.append(fmt.format(value) if not isinstance(value, str) or fmt == "{}" else value)
        rows.append(row)
    widths = [max(len(r[c]) for r in [headers] + rows) for c in range(len(headers))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in [headers] + rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--train-file", type=Path, default=DEFAULT_TRAIN_FILE, help="default engine/train.py")
    parser.add_argument("--budget", type=float, default=300, help="training seconds (default 300)")
    parser.add_argument("--attention", nargs="+", default=["auto"], choices=["auto", "fa3", "flex", "sdpa"],
                        help="kernel(s) to force, one run set each (default auto: the file's own choice)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per kernel (default 1)")
    parser.add_argument("--cold", action="store_true",
                        help="start from an empty compile cache (shared by this invocation's runs)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run (default 2 * budget + 300)")
    parser.add_argument("--log-dir", type=Path, default=None, help="run logs (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    if not args.train_file.is_file():
        print(f"bench: error: no train file at {args.train_file}", file=sys.stderr)
        return 1
    if args.budget <= 0 or args.repeat < 1:
        print("bench: error: --budget must be positive and --repeat at least 1", file=sys.stderr)
        return 1
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-engine-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    extra_env = {}
    if args.cold:
        extra_env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
        extra_env["TRITON_CACHE_DIR"] = os.path.join(extra_env["TORCHINDUCTOR_CACHE_DIR"], "triton")
    timeout = args.timeout or 2 * args.budget + 300
    device = gpu_name()
    print(f"bench: {args.train_file} on {device}, budget {args.budget:g}s, logs in {log_dir}", file=sys.stderr)

    runs = []
    for attention in args.attention:
        for repeat in range(1, args.repeat + 1):
            log_path = log_dir / f"{attention}-{repeat}.log"
            run = run_once(args.train_file, args.budget, attention, log_path, timeout, extra_env)
            run.update(requested_attention=attention, repeat=repeat)
            runs.append(run)

    print(format_table(runs))
    for i, run in enumerate(runs, 1):
        if run["returncode"] != 0:
            print(f"run {i} failed (exit {run['returncode']}), log {run['log']}:", *run.get("error_tail", []),
                  sep="\n  ")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = dict(device=device, train_file=str(args.train_file), budget_s=args.budget, cold=args.cold,
                      created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), runs=runs)
        args.out.write_text(json.dumps(_nan_to_none(result), indent=2, default=str) + "\n")
        print(f"bench: results -> {args.out}", file=sys.stderr)
    return 0 if all(run["returncode"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
