#!/usr/bin/env python3
"""Dataloader benchmark: how much a loader disturbs a training loop that shares its process.

    python bench/dataloader.py CACHE [--batch 128] [--seq 2048] [--batches 100]
                               [--step-ms 175] [--python-ms 30] [--loaders none prepare] [--pin]

CACHE is a prepared cache root (data/ and tokenizer/, as `python -m prepare` leaves it). Every
loader packs the same training documents with the same tokenizer on the CPU, inside a simulated
training loop: per batch, --python-ms of pure-Python work (the kernel launches of a compiled
step: it needs the GIL), then a GIL-free wait until --step-ms (the GPU still computing), then
next(loader). A loader that holds the GIL (packing or tokenizing in the training process)
stretches the Python part; one that cannot keep up makes next() wait. Per loader the table gives
the simulated step time p10/p50/p90 and their ratio, the Python part's mean and p90 against its
time alone, the wait in next(), and batches/s. `none` is the loop without any loader.

--pin (Linux) keeps the loop on CPU 0 and moves the loader (its threads, or its process) to the
other CPUs, so that on a small or shared machine the comparison measures GIL contention rather
than a fight for cores.

`reference` is the reference's make_dataloader on the CPU (synchronous, a Python scan of the whole
buffer per placed document); the test that checks prepare's loader yields identical rows uses it.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def reference_loader(tokenizer, B, T, split="train", buffer_size=1000):
    """The reference's make_dataloader on the CPU: synchronous, O(buffer) scan per document."""
    import torch

    from prepare.corpus import document_batches

    row_capacity = T + 1
    batches = document_batches(split)
    bos = tokenizer.get_bos_token_id()
    doc_buffer: list[list[int]] = []
    epoch = 1

    def refill():
        nonlocal epoch
        docs, epoch = next(batches)
        doc_buffer.extend(tokenizer.encode(docs, prepend=bos))

    rows = torch.empty((B, row_capacity), dtype=torch.long)
    while True:
        for r in range(B):
            pos = 0
            while pos < row_capacity:
                while len(doc_buffer) < buffer_size:
                    refill()
                remaining = row_capacity - pos
                best, best_len = -1, 0
                for i, doc in enumerate(doc_buffer):
                    if best_len < len(doc) <= remaining:
                        best, best_len = i, len(doc)
                if best >= 0:
                    doc = doc_buffer.pop(best)
                    rows[r, pos:pos + len(doc)] = torch.tensor(doc, dtype=torch.long)
                    pos += len(doc)
                else:
                    shortest = min(range(len(doc_buffer)), key=lambda i: len(doc_buffer[i]))
                    doc = doc_buffer.pop(shortest)
                    rows[r, pos:] = torch.tensor(doc[:remaining], dtype=torch.long)
                    pos += remaining
        yield rows[:, :-1].clone(), rows[:, 1:].clone(), epoch


def python_work(n: int) -> int:
    """Pure-Python busy work standing in for a step's kernel launches: many small calls."""
    total, table = 0, {}
    for i in range(n):
        table[i & 255] = i
        total += len(table) + (i % 7)
    return total


def calibrate(python_ms: float) -> int:
    """Iterations of python_work that take python_ms alone (best of a few tries)."""
    n = 20_000
    best = min(_timed(python_work, n) for _ in range(5))
    return max(1, int(n * python_ms / 1e3 / best))


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def pin_loader_away_from_loop() -> None:
    """The calling (loop) thread on CPU 0; every other thread and child process on the rest.
    Threads they start later (the tokenizer's) inherit their CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    loop_cpu, others = {cpus[0]}, set(cpus[1:])
    os.sched_setaffinity(threading.get_native_id(), loop_cpu)   # Linux: a thread id pins one thread
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.native_id is not None:
            os.sched_setaffinity(thread.native_id, others)
    for child in multiprocessing.active_children():
        os.sched_setaffinity(child.pid, others)


def simulate(loader, n_batches: int, step_s: float, work_n: int, pin: bool = False) -> dict:
    """The training loop: Python work (GIL), GIL-free wait to step_s, next(loader)."""
    if loader is not None:
        next(loader)   # first buffer fill, process or thread start: outside the measurement
    if pin:
        pin_loader_away_from_loop()
    steps, python, waits = [], [], []
    start = time.perf_counter()
    for _ in range(n_batches):
        t0 = time.perf_counter()
        python_work(work_n)
        t1 = time.perf_counter()
        if step_s > t1 - t0:
            time.sleep(step_s - (t1 - t0))
        t2 = time.perf_counter()
        if loader is not None:
            next(loader)
        t3 = time.perf_counter()
        steps.append(t3 - t0)
        python.append(t1 - t0)
        waits.append(t3 - t2)
    total = time.perf_counter() - start
    if hasattr(loader, "close"):
        loader.close()
    ms = lambda s: 1e3 * s
    return {
        "step p10": ms(percentile(steps, 10)), "step p50": ms(percentile(steps, 50)),
        "step p90": ms(percentile(steps, 90)), "p90/p10": percentile(steps, 90) / percentile(steps, 10),
        "py mean": ms(sum(python) / len(python)), "py p90": ms(percentile(python, 90)),
        "wait p90": ms(percentile(waits, 90)), "wait max": ms(max(waits)), "batch/s": n_batches / total,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", type=Path, help="prepared cache root (data/ and tokenizer/)")
    parser.add_argument("--batch", type=int, default=128, help="rows per batch (default 128, the baseline's)")
    parser.add_argument("--seq", type=int, default=2048, help="sequence length T (default 2048)")
    parser.add_argument("--batches", type=int, default=100, help="timed batches per loader (default 100)")
    parser.add_argument("--step-ms", type=float, default=175.0,
                        help="simulated step per batch (default 175: an H100 micro-step of the baseline)")
    parser.add_argument("--python-ms", type=float, default=30.0,
                        help="pure-Python part of each step, GIL held (default 30)")
    parser.add_argument("--loaders", nargs="+", default=["none", "prepare"], choices=["none", "reference", "prepare"],
                        help="what to run (default: none prepare; reference is slow at B=128)")
    parser.add_argument("--pin", action="store_true",
                        help="loop on CPU 0, loader on the other CPUs (Linux, 2 or more CPUs)")
    args = parser.parse_args(argv)
    if not (args.cache / "data").is_dir() or not (args.cache / "tokenizer").is_dir():
        print(f"error: {args.cache} is not a prepared cache (no data/ or tokenizer/); run `python -m prepare`", file=sys.stderr)
        return 1
    if min(args.batch, args.seq, args.batches) < 1 or args.python_ms < 0 or args.step_ms < 0:
        print("error: --batch, --seq and --batches must be positive, --step-ms and --python-ms not negative", file=sys.stderr)
        return 1
    if args.pin and len(getattr(os, "sched_getaffinity", lambda _: ())(0)) < 2:
        print("error: --pin needs Linux and at least 2 CPUs", file=sys.stderr)
        return 1
    os.environ["AUTORESEARCH_CACHE"] = str(args.cache)
    from prepare import Tokenizer, make_dataloader

    tokenizer = Tokenizer.from_directory()
    all_cpus = os.sched_getaffinity(0) if args.pin else set()
    if args.pin:
        os.sched_setaffinity(threading.get_native_id(), {min(all_cpus)})
    work_n = calibrate(args.python_ms)   # on the loop's CPU when pinned
    make = {
        "none": lambda: None,
        "reference": lambda: reference_loader(tokenizer, args.batch, args.seq),
        "prepare": lambda: make_dataloader(tokenizer, args.batch, args.seq, "train", device="cpu"),
    }
    results = {}
    for name in args.loaders:
        if args.pin:   # each loader starts on every CPU, then simulate() moves it off the loop's
            os.sched_setaffinity(threading.get_native_id(), all_cpus)
        results[name] = simulate(make[name](), args.batches, args.step_ms / 1e3, work_n, args.pin)
    print(f"B={args.batch} T={args.seq} batches={args.batches} step={args.step_ms:g} ms "
          f"python={args.python_ms:g} ms cores={os.cpu_count()}{' pinned' if args.pin else ''}")
    columns = list(next(iter(results.values())))
    print(f"{'loader':10s}" + "".join(f"{c:>10s}" for c in columns))
    for name, row in results.items():
        print(f"{name:10s}" + "".join(f"{row[c]:10.2f}" for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
