#!/usr/bin/env python3
"""Dataloader benchmark: the reference's synchronous packer against prepare's background one.

    python bench/dataloader.py CACHE [--batch 32] [--seq 2048] [--batches 200] [--step-ms 0]

CACHE is a prepared cache root (data/ and tokenizer/, as `python -m prepare` leaves it). Both
loaders pack the same training documents with the same tokenizer on the CPU. The table gives
throughput and the latency of each `next()` call, which is what the training loop waits for.
--step-ms simulates the GPU work between two batches (a sleep), which the background loader
overlaps and the synchronous one cannot.

The reference-style implementation lives only here (and in the test that checks both loaders
produce identical rows): a Python scan of the whole buffer for every placed document.
"""
from __future__ import annotations

import argparse
import os
import statistics
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


def measure(loader, n_batches: int, step_s: float) -> dict:
    next(loader)   # warm-up: first buffer fill, thread start
    waits = []
    start = time.perf_counter()
    for _ in range(n_batches):
        t0 = time.perf_counter()
        next(loader)
        waits.append(time.perf_counter() - t0)
        if step_s:
            time.sleep(step_s)
    total = time.perf_counter() - start
    waits.sort()
    pick = lambda q: waits[min(len(waits) - 1, int(q * len(waits)))] * 1e3
    return {"batches/s": n_batches / total, "p10 ms": pick(0.1), "median ms": statistics.median(waits) * 1e3,
            "p90 ms": pick(0.9), "max ms": waits[-1] * 1e3}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", type=Path, help="prepared cache root (data/ and tokenizer/)")
    parser.add_argument("--batch", type=int, default=32, help="rows per batch (default 32)")
    parser.add_argument("--seq", type=int, default=2048, help="sequence length T (default 2048)")
    parser.add_argument("--batches", type=int, default=200, help="timed batches per loader (default 200)")
    parser.add_argument("--step-ms", type=float, default=0.0, help="simulated GPU step between batches")
    args = parser.parse_args(argv)
    if not (args.cache / "data").is_dir() or not (args.cache / "tokenizer").is_dir():
        print(f"error: {args.cache} is not a prepared cache (no data/ or tokenizer/); run `python -m prepare`", file=sys.stderr)
        return 1
    os.environ["AUTORESEARCH_CACHE"] = str(args.cache)
    from prepare import Tokenizer, make_dataloader

    tokenizer = Tokenizer.from_directory()
    step_s = args.step_ms / 1e3
    results = {
        "reference (sync, O(buffer) scan)": measure(reference_loader(tokenizer, args.batch, args.seq), args.batches, step_s),
        "prepare (thread, length index)": measure(make_dataloader(tokenizer, args.batch, args.seq, "train", device="cpu"),
                                                  args.batches, step_s),
    }
    print(f"B={args.batch} T={args.seq} batches={args.batches} step={args.step_ms} ms cores={os.cpu_count()}")
    columns = list(next(iter(results.values())))
    print(f"{'loader':34s}" + "".join(f"{c:>12s}" for c in columns))
    for name, row in results.items():
        print(f"{name:34s}" + "".join(f"{row[c]:12.2f}" for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
