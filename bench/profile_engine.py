#!/usr/bin/env python3
"""Where one optimizer step of a train file spends its GPU time: step times, then a torch.profiler
table of the kernels, split into forward, backward and optimizer.

    python bench/profile_engine.py                          # engine/train.py, 20 timed steps
    python bench/profile_engine.py --train-file variant.py  # compare a variant on the same GPU
    python bench/profile_engine.py --no-profile --steps 40  # step times only

The train file is imported, not run: its model, optimizer, attention choice and batch constants
are used as they are, on random tokens (the step's cost does not depend on the data), with the
same torch.compile call as its own loop. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_train_file(path: Path):
    """The train file as a module (its `main()` is not run: __name__ is not __main__)."""
    sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location("profiled_train_file", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # torch.compile looks functions' globals up by module name
    spec.loader.exec_module(module)
    return module


def layer_bench_parser(doc: str, iters: int) -> argparse.ArgumentParser:
    """The options of the one-layer benches (attention_kernels.py, mlp_kernels.py): the train file's
    shapes by default, and how many calls to time."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=128, help="sequences per call (the train file's DEVICE_BATCH_SIZE)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=iters)
    parser.add_argument("--train-file", type=Path, default=REPO / "engine" / "train.py")
    return parser


def median_cuda_ms(fn, warmup: int, iters: int) -> float:
    """Median GPU time of `fn()` in ms over `iters` calls (CUDA events), after `warmup` untimed calls."""
    import torch
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def build(train, vocab_size: int):
    import torch
    config = train.build_config(vocab_size)
    attention = train.select_attention("cuda")
    with torch.device("meta"):
        raw_model = train.GPT(config, attention)
    raw_model.to_empty(device="cuda")
    raw_model.init_weights()
    if hasattr(train, "enable_fused_mlp"):  # as the file's main() does (files before session 8 have none)
        print(f"mlp: {train.enable_fused_mlp(raw_model, 'cuda')}")
    optimizer = raw_model.setup_optimizer()
    if attention.backend != "fa3":
        for window in set(raw_model.window_sizes):
            if attention.needs_mask(train.MAX_SEQ_LEN, window):
                attention.mask(train.MAX_SEQ_LEN, window, torch.device("cuda"))
    return torch.compile(raw_model, dynamic=False), optimizer, attention.backend


def make_step(train, model, optimizer, vocab_size: int):
    import torch
    from torch.profiler import record_function
    rows, seq_len = train.DEVICE_BATCH_SIZE, train.MAX_SEQ_LEN
    accumulation = train.TOTAL_BATCH_SIZE // (rows * seq_len)
    x = torch.randint(0, vocab_size, (rows, seq_len), device="cuda")
    y = torch.roll(x, -1, dims=1)

    def step() -> float:
        for _ in range(accumulation):
            with record_function("forward"), torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16):
                loss = model(x, y)
            with record_function("backward"):
                (loss / accumulation).backward()
        with record_function("optimizer"):
            optimizer.step()
            model.zero_grad(set_to_none=True)
        return loss.item()
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-file", type=Path, default=REPO / "engine" / "train.py")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (the first compiles)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--profile-steps", type=int, default=3, help="steps under the profiler")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--rows", type=int, default=30, help="kernel rows in the table")
    args = parser.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("error: profile_engine needs a CUDA GPU", file=sys.stderr)
        return 1
    torch.set_float32_matmul_precision("high")
    train = load_train_file(args.train_file)
    torch.manual_seed(0)  # the same weights and tokens for every file, so their warm-up losses compare
    model, optimizer, backend = build(train, args.vocab_size)
    step = make_step(train, model, optimizer, args.vocab_size)
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.warmup)]
    print(f"{args.train_file.name}: attention {backend}, warm-up {time.perf_counter() - t0:.1f} s "
          f"({args.warmup} steps, compile included)"
          + (f"; loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else ""))
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - t))
    times.sort()
    print(f"step ms: p10 {times[len(times) // 10]:.1f}  median {statistics.median(times):.1f}  "
          f"p90 {times[(9 * len(times)) // 10]:.1f}  ({args.steps} steps, "
          f"{torch.cuda.get_device_name()})")
    if args.no_profile:
        return 0
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.profile_steps):
            step()
    averages = prof.key_averages()
    for name in ("forward", "backward", "optimizer"):
        spans = [e for e in averages if e.key == name and e.device_time_total > 0]
        if spans:
            print(f"{name:10s} {spans[0].device_time_total / 1000 / args.profile_steps:8.1f} ms of GPU a step")
    print(averages.table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
