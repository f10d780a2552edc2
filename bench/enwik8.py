#!/usr/bin/env python3
"""Benchmark the enwik8 train file on a GPU: one training at a given budget, then its figures.

    python bench/enwik8.py [--budget 300] [--fp8] [--from-files enwik8.zip] [--log run.log]

Data: the prepared cache ($AUTORESEARCH_CACHE/enwik8) when there is one; else --from-files; else
the download of enwik8; and when that fails (the GPU machines reach no network) a 100 MB byte file
built from the text that ships with the machine (Python sources and docs), which the output says.
Prints chars/s (counted steps only), steps, val_bpc, peak memory, MFU and a results line for
BENCHMARKS.md. See bench/README_enwik8.md for the wheels the GPU machine needs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import site
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from population.summary import parse_summary  # noqa: E402
from prepare import enwik8  # noqa: E402

LOCAL_TEXT_BYTES = 100_000_000
TEXT_SUFFIXES = (".py", ".pyi", ".md", ".rst", ".txt")
WARMUP_STEPS = 6                                   # steps 0..5 are outside the budget (train file)


def text_files(root: str):
    """Text files under root in a fixed (sorted, depth-first) order, found lazily."""
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            if name.endswith(TEXT_SUFFIXES):
                yield Path(directory) / name


def build_local_text(path: Path, size: int = LOCAL_TEXT_BYTES) -> int:
    """Concatenate the machine's own Python sources and docs (sorted, so reproducible) up to size bytes."""
    roots = sorted({os.path.realpath(p) for p in site.getsitepackages() + [sysconfig.get_paths()["stdlib"]]})
    roots = [r for r in roots if not any(r.startswith(other + os.sep) for other in roots)]  # no file twice
    written = 0
    with open(path, "wb") as out:
        for root in roots:
            for file in text_files(root):
                data = file.read_bytes()[: size - written]
                out.write(data)
                written += len(data)
                if written >= size:
                    return written
    return written


def ensure_data(from_files: list[str] | None, local_bytes: int = LOCAL_TEXT_BYTES) -> str:
    """Prepare the splits; returns a one-line description of the data actually used."""
    meta_path = enwik8.data_dir() / "meta.json"
    if from_files:
        meta = enwik8.prepare(from_files)
    elif meta_path.is_file():
        meta = json.loads(meta_path.read_text())
    else:
        try:
            meta = enwik8.prepare(attempts=2)
        except enwik8.PrepareError as e:
            local = enwik8.data_dir().parent / "enwik8-local-text.bin"
            print(f"enwik8 cannot be had here ({e});\nbuilding a {local_bytes / 1e6:.0f} MB byte file "
                  f"from this machine's Python sources and docs instead: {local}", flush=True)
            local.parent.mkdir(parents=True, exist_ok=True)
            written = build_local_text(local, local_bytes)
            if written < local_bytes:
                print(f"note: only {written:,} bytes of local text found")
            meta = enwik8.prepare([str(local)], force=True)
    kind = "enwik8 (published, sha256 checked)" if meta["genuine_enwik8"] else "NOT enwik8: local bytes"
    return f"{kind}, {meta['bytes']:,} bytes, source {meta['source']}"


def run_training(budget: float, fp8: bool, log_path: Path) -> str:
    # keep a PYTHONPATH that points at carried wheels
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "AUTORESEARCH_TIME_BUDGET": str(budget), "PYTHONPATH": python_path,
           "USE_FP8": "1" if fp8 else "0"}
    lines = []
    command = [sys.executable, "engine/train_enwik8.py"]
    with subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as proc, open(log_path, "w") as log:
        for line in proc.stdout:                   # tee: progress on screen, everything in the log
            sys.stdout.write(line)
            log.write(line)
            lines.append(line)
    if proc.returncode != 0:
        raise SystemExit(f"error: the training exited with {proc.returncode}; see {log_path}")
    return "".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=300, help="training seconds (default 300)")
    parser.add_argument("--fp8", action="store_true", help="USE_FP8=1 (torchao float8, capability >= 8.9)")
    parser.add_argument("--from-files", nargs="+", metavar="PATH", help="local enwik8.zip / raw file(s)")
    parser.add_argument("--local-mb", type=float, default=LOCAL_TEXT_BYTES / 1e6,
                        help="size of the local-text stand-in when enwik8 cannot be had (default 100)")
    parser.add_argument("--log", type=Path, default=Path("bench-enwik8.log"), help="where the run's log goes")
    args = parser.parse_args()

    try:
        data = ensure_data(args.from_files, int(args.local_mb * 1e6))
    except enwik8.PrepareError as e:
        raise SystemExit(f"error: {e}") from None
    t0 = time.time()
    log = run_training(args.budget, args.fp8, args.log)
    wall = time.time() - t0
    s = parse_summary(log)
    if "val_bpc" not in s:
        raise SystemExit(f"error: no summary block in the training's output; see {args.log}")
    per_step = re.search(r"([\d,]+) characters per step", log)   # the train file's start-up line
    if per_step:
        chars_per_step = int(per_step.group(1).replace(",", ""))
    else:
        chars_per_step = s["total_tokens_M"] * 1e6 / s["num_steps"]
    chars_per_s = chars_per_step * (s["num_steps"] - WARMUP_STEPS) / s["training_seconds"]
    precision = next((line.split(":", 1)[1].strip() for line in log.splitlines()
                      if line.startswith("precision:")), "?")
    try:
        import torch
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception:
        gpu = "?"
    print("\n=== enwik8 bench ===")
    print(f"gpu              {gpu}")
    print(f"data             {data}")
    print(f"precision        {precision}")
    print(f"budget           {args.budget:.0f} s (training_seconds {s['training_seconds']:.1f}, "
          f"total {s['total_seconds']:.1f}, wall {wall:.1f})")
    print(f"chars/s          {chars_per_s:,.0f}")
    print(f"steps            {s['num_steps']:.0f} ({s['total_tokens_M']:.1f} M chars)")
    print(f"val_bpc          {s['val_bpc']:.6f}")
    print(f"peak memory      {s['peak_vram_mb'] / 1024:.1f} GiB")
    print(f"mfu              {s['mfu_percent']:.2f} %")
    print(f"\n| {gpu} | {precision} | {args.budget:.0f} | {s['val_bpc']:.4f} | {chars_per_s / 1e6:.3f} M | "
          f"{s['num_steps']:.0f} | {s['peak_vram_mb'] / 1024:.1f} GiB | {s['mfu_percent']:.1f} % |")


if __name__ == "__main__":
    main()
