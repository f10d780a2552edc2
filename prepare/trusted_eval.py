"""The trusted evaluator: the metric of an experiment, computed on the fixed side.

The train file trains and saves its model; this process, after the training has exited, starts
the model server (`prepare/model_server.py`, the child's code, sandboxed, no data) and talks to it
over a pipe: it sends token ids, receives logits, and computes the loss and the bits per byte
itself, in float64, from the validation rows only it has read. It also scores a hidden holdout
(rows no training and no agent reads) that selection never sees.

Before a number is trusted, causality probes run on real rows, mixed at random (a secret order
from the OS's generator) into the scoring batches: for a few rows and a few positions t, a copy
of the row with every token after t changed must give the same logits at positions <= t as the
row itself did when it was scored, and an unchanged copy in another batch must give the same
logits everywhere (rows of a batch must not affect each other, and the model must be
deterministic). A stateful model cannot tell a probe from a scored row.

    python -m prepare.trusted_eval --task climbmix --train-file F --checkpoint C --device cpu \
        [--server-argv-json '[...]'] [--holdout-tokens N]

The last line of stdout is one JSON object: {"metric": ..., "holdout": ..., ...} or {"error": ...}.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from prepare import wire

PROBE_ROWS = 4                 # rows probed for causality, at PROBE_CUTS positions each
PROBE_CUTS = 2
TOLERANCE = {"cpu": 1e-3, "cuda": 5e-2}   # max |logit change| of an honest model (bf16 on a GPU)
DEFAULT_BATCH = {"cpu": 16, "cuda": 64}


class EvaluationError(RuntimeError):
    """Why the metric could not be computed or cannot be trusted; one line naming the rule."""


@dataclass
class EvalSet:
    """Rows of T+1 token ids; the targets at `mask` are scored; `units` is the denominator
    (bytes for val_bpb, characters for val_bpc)."""
    name: str
    rows: np.ndarray          # (N, T+1) int64
    mask: np.ndarray          # (N, T) float64 weights: 1 where scored (climbmix: where the target has bytes)
    units: float
    vocab_size: int


# ---------------------------------------------------------------- the evaluation sets

def climbmix_sets(eval_tokens: int, holdout_tokens: int, seq_len: int) -> list[EvalSet]:
    """Validation rows first, the holdout right after them in the pinned validation shard: no
    training reads that shard, and selection sees only the first part."""
    from prepare.dataloader import pack_rows
    from prepare.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_directory()
    n_val, n_hold = max(1, eval_tokens // seq_len), (holdout_tokens // seq_len if holdout_tokens else 0)
    rows = pack_rows(tokenizer, n_val + n_hold, seq_len, "val")
    token_bytes = np.asarray(tokenizer.token_byte_lengths(), dtype=np.int64)
    sets = []
    for name, part in (("val", rows[:n_val]), ("holdout", rows[n_val:])):
        if len(part):
            nbytes = token_bytes[part[:, 1:]]
            sets.append(EvalSet(name, part, (nbytes > 0).astype(np.float64), float(nbytes.sum()),
                                tokenizer.get_vocab_size()))
    return sets


def enwik8_sets(eval_chars: int, holdout_chars: int) -> list[EvalSet]:
    """enwik8: the val split's windows (prepare.enwik8.eval_plan) and, as holdout, the test split's."""
    from prepare import enwik8

    sets = []
    for name, split, n in (("val", "val", eval_chars), ("holdout", "test", holdout_chars)):
        if not n:
            continue
        data = np.asarray(enwik8.load_split(split), dtype=np.int64)
        plan, n_chars = enwik8.eval_plan(len(data), n, enwik8.EVAL_SEQ_LEN, enwik8.EVAL_STRIDE)
        offsets = np.arange(enwik8.EVAL_SEQ_LEN + 1)
        rows = data[np.array([s for s, _ in plan])[:, None] + offsets]
        mask = (np.arange(enwik8.EVAL_SEQ_LEN)[None, :] >= np.array([f for _, f in plan])[:, None]).astype(np.float64)
        sets.append(EvalSet(name, rows, mask, float(n_chars), enwik8.VOCAB_SIZE))
    return sets


# ---------------------------------------------------------------- scoring (pure)

def row_nats(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-position negative log-likelihood in float64 from raw logits: logsumexp - logit[target]."""
    z = logits.astype(np.float64)
    peak = z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z - peak).sum(axis=-1)) + peak[..., 0]
    picked = np.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
    return lse - picked


@dataclass(frozen=True)
class Request:
    set_index: int
    row: int
    kind: str                  # score | cut (tokens after `cut` changed) | copy (same row, other batch)
    cut: int = -1


def plan_requests(sets: list[EvalSet], rng: random.Random) -> tuple[list[Request], list[Request]]:
    """(every request in a secret random order, the probes among them). Probes use rows of the
    validation set, so a model cannot treat them apart from what is scored."""
    scored = [Request(i, r, "score") for i, s in enumerate(sets) for r in range(len(s.rows))]
    T = sets[0].rows.shape[1] - 1
    probe_rows = rng.sample(range(len(sets[0].rows)), min(PROBE_ROWS, len(sets[0].rows)))
    probes = [Request(0, r, "cut", rng.randrange(0, T - 1)) for r in probe_rows for _ in range(PROBE_CUTS)]
    probes += [Request(0, r, "copy") for r in probe_rows]
    requests = scored + probes
    rng.shuffle(requests)
    return requests, probes


def request_input(request: Request, sets: list[EvalSet], rng: random.Random) -> np.ndarray:
    x = sets[request.set_index].rows[request.row, :-1].copy()
    if request.kind == "cut":
        vocab = sets[request.set_index].vocab_size
        after = slice(request.cut + 1, None)
        x[after] = (x[after] + np.array([rng.randrange(1, vocab) for _ in range(len(x) - request.cut - 1)])) % vocab
    return x


def evaluate(server: subprocess.Popen, sets: list[EvalSet], batch_size: int, tolerance: float,
             rng: random.Random | None = None, progress=None) -> dict:
    """Score every set through the model server; raise EvaluationError if a probe fails."""
    rng = rng or random.SystemRandom()
    requests, probes = plan_requests(sets, rng)
    probed_rows = {p.row for p in probes}
    nats = [np.zeros(len(s.rows)) for s in sets]
    kept: dict[tuple[str, int, int], np.ndarray] = {}     # logits of probed rows, by (kind, row, cut)
    T, V = sets[0].rows.shape[1] - 1, sets[0].vocab_size
    for start in range(0, len(requests), batch_size):
        batch = requests[start:start + batch_size]
        x = np.stack([request_input(r, sets, rng) for r in batch])
        padded = np.concatenate([x, np.repeat(x[:1], batch_size - len(batch), axis=0)]) if len(batch) < batch_size else x
        wire.write_rows(server.stdin, padded)
        logits = wire.read_logits(server.stdout, batch_size, T, V)[:len(batch)]
        if not np.isfinite(logits).all():
            raise EvaluationError("the model returned non-finite logits")
        for request, row_logits in zip(batch, logits):
            s = sets[request.set_index]
            if request.kind == "score":
                targets = s.rows[request.row, 1:]
                nats[request.set_index][request.row] = float((row_nats(row_logits, targets) * s.mask[request.row]).sum())
            if request.set_index == 0 and request.row in probed_rows:
                kept[(request.kind, request.row, request.cut)] = row_logits.copy()
        if progress:
            progress(min(start + batch_size, len(requests)), len(requests))
    check_probes(kept, probes, tolerance)
    result = {f"{s.name}_units": s.units for s in sets}
    for s, n in zip(sets, nats):
        result[s.name] = float(n.sum() / (math.log(2) * s.units))
    result["probes"] = len(probes)
    return result


def check_probes(kept: dict, probes: list[Request], tolerance: float) -> None:
    """Every probe against the logits that its row was scored with (copies first: a model that
    mixes rows or is not deterministic fails those, whatever else it does)."""
    for probe in sorted(probes, key=lambda p: p.kind != "copy"):
        reference = kept[("score", probe.row, -1)]
        seen = kept[(probe.kind, probe.row, probe.cut)]
        if probe.kind == "cut":
            moved = float(np.abs(seen[:probe.cut + 1] - reference[:probe.cut + 1]).max())
            if not moved <= tolerance:
                raise EvaluationError(
                    f"causality rule: changing the tokens after position {probe.cut} of a validation row moved "
                    f"the logits at positions <= {probe.cut} by {moved:.3g} (tolerance {tolerance:g}); "
                    "the model sees the future (or remembers what it was shown)")
        else:
            moved = float(np.abs(seen - reference).max())
            if not moved <= tolerance:
                raise EvaluationError(
                    f"independence rule: the same validation row gave logits {moved:.3g} apart in two batches "
                    f"(tolerance {tolerance:g}); rows of a batch must not affect each other and the model "
                    "must be deterministic (eval mode, no dropout)")


# ---------------------------------------------------------------- the process

def start_server(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr,
                            start_new_session=True)


def run(args) -> dict:
    from prepare import constants

    started = time.perf_counter()
    if args.task == "enwik8":
        from prepare import enwik8
        eval_n = enwik8.EVAL_CHARS
        sets = enwik8_sets(eval_n, args.holdout_tokens if args.holdout_tokens is not None else eval_n // 4)
    else:
        eval_n = constants.EVAL_TOKENS
        sets = climbmix_sets(eval_n, args.holdout_tokens if args.holdout_tokens is not None else eval_n // 4,
                             constants.MAX_SEQ_LEN)
    server_argv = json.loads(args.server_argv_json) if args.server_argv_json else \
        [sys.executable, "-m", "prepare.model_server", args.train_file, args.checkpoint, args.device]
    server = start_server(server_argv)
    try:
        result = evaluate(server, sets, args.batch_size or DEFAULT_BATCH[args.device],
                          TOLERANCE[args.device])
    except (wire.WireError, BrokenPipeError) as exc:
        raise EvaluationError(f"the model server failed: {exc}") from None
    finally:
        try:
            server.stdin.close()
        except OSError:
            pass
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    result["metric"] = result.pop("val")
    result["seconds"] = time.perf_counter() - started
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Score a trained checkpoint on the fixed side (the trusted evaluator).")
    parser.add_argument("--task", default="climbmix", choices=("climbmix", "enwik8"))
    parser.add_argument("--train-file", required=True, help="the child's committed train file (defines load_model)")
    parser.add_argument("--checkpoint", required=True, help="what the training saved at AUTORESEARCH_CHECKPOINT")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=0, help="rows per request (speed only)")
    parser.add_argument("--holdout-tokens", type=int, default=None,
                        help="scored holdout targets (default: a quarter of the validation's; 0: none)")
    parser.add_argument("--server-argv-json", default="",
                        help="the model server's command line as a JSON list (the worker wraps it in the sandbox)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (EvaluationError, OSError, ValueError) as exc:
        print(json.dumps({"error": " ".join(str(exc).split())}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
