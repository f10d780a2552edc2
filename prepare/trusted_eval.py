"""The trusted evaluator: the metric of an experiment, computed on the fixed side.

The train file trains and saves its model; this process starts the model server
(`prepare/model_server.py`: the child's code, sandboxed, no data) and talks to it over a pipe: it
sends token ids, receives logits, and computes the loss and the bits per byte itself from the
validation rows only it has read. It also scores a hidden holdout (rows no training and no agent
reads) that selection never sees.

On a GPU the logits never leave it: the evaluator allocates a buffer, hands its file descriptor to
the server (`prepare/cuda_share.py`), the server writes each batch's logits there and says DONE.
On the CPU they come back through the pipe.

Before a number is trusted, causality probes run on real rows, mixed at random (a secret order
from the OS's generator) into the scoring batches: for a few rows and a few positions t, a copy
of the row with every token after t changed must give the same logits at positions <= t as the
row itself did when it was scored, and an unchanged copy in another batch must give the same
logits everywhere (rows of a batch must not affect each other, and the model must be
deterministic). A stateful model cannot tell a probe from a scored row.

    python -m prepare.trusted_eval --task climbmix --train-file F --checkpoint C --device cpu \
        [--server-argv-json '[...]'] [--holdout-tokens N] [--warmup-checkpoint W] [--wait-for-go]

With `--wait-for-go` it loads the data, makes its CUDA context and starts the server at once (which
imports the train file), then waits for a line on stdin before the model is loaded: the worker
starts it beside the training, so the imports and the data cost no time after the training ends
(EOF instead of a line: called off, exit 0).
The last line of stdout is one JSON object: {"metric": ..., "holdout": ..., ...} or {"error": ...}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from prepare import wire

# Causality probes: one cut at a random position in each of max(MIN_PROBE_ROWS, PROBE_SHARE of the
# validation rows) random rows (2 % more forward passes on a GPU); copies of COPY_ROWS of them.
# Sampling cannot prove a model causal: one that peeks at a small share of positions can pass one
# evaluation (its descendants carry the same code, and every evaluation draws new probes).
PROBE_SHARE = 0.02
MIN_PROBE_ROWS = 16
COPY_ROWS = 8
TOLERANCE = {"cpu": 1e-3, "cuda": 5e-2}   # max change of a position's loss (nats) of an honest model (bf16 on a GPU)
DEFAULT_BATCH = {"cpu": 16, "cuda": 64}
HOLDOUT_SHARE = 8              # holdout targets: 1/8 of the validation's, unless --holdout-tokens


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


def task_sets(task: str, holdout_tokens: int | None) -> list[EvalSet]:
    from prepare import constants

    if task == "enwik8":
        from prepare import enwik8
        n = enwik8.EVAL_CHARS
        return enwik8_sets(n, n // HOLDOUT_SHARE if holdout_tokens is None else holdout_tokens)
    n = constants.EVAL_TOKENS
    return climbmix_sets(n, n // HOLDOUT_SHARE if holdout_tokens is None else holdout_tokens, constants.MAX_SEQ_LEN)


# ---------------------------------------------------------------- scoring (pure)

def position_nats(logits, targets):
    """Negative log-likelihood of `targets` at every position, from raw logits (B, T, V) as torch
    tensors: logsumexp - logit[target], in float32 on a GPU (float64 on the CPU), returned in float64."""
    import torch

    z = logits.double() if logits.device.type == "cpu" else logits.float()
    return (torch.logsumexp(z, dim=-1) - z.gather(-1, targets[..., None])[..., 0]).double()


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
    n_rows = len(sets[0].rows)
    probe_rows = rng.sample(range(n_rows), min(n_rows, max(MIN_PROBE_ROWS, round(PROBE_SHARE * n_rows))))
    probes = [Request(0, r, "cut", rng.randrange(0, T - 1)) for r in probe_rows]
    probes += [Request(0, r, "copy") for r in probe_rows[:COPY_ROWS]]
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


class PipeLogits:
    """Logits back through the pipe (the CPU path). `submit` sends a batch, `result` waits for its
    logits; one batch is in flight at a time."""

    def __init__(self, server: subprocess.Popen):
        self.server = server
        self.shape = None

    def submit(self, x: np.ndarray) -> None:
        wire.write_rows(self.server.stdin, x)
        self.shape = x.shape

    def result(self, V: int):
        import torch
        B, T = self.shape
        return torch.from_numpy(wire.read_logits(self.server.stdout, B, T, V).copy())


class SharedLogits(PipeLogits):
    """Logits written by the server into a GPU buffer this process owns (the GPU path), in its two
    halves by turns. Each batch is copied out before it is scored, so what is scored is what the
    server said DONE to; the server writes that half again only for the batch after next, which
    is sent once this one is scored (the scoring waits for the copy)."""

    def __init__(self, server: subprocess.Popen, buffer):
        super().__init__(server)
        self.buffer, self.replies = buffer, 0

    def result(self, V: int):
        import torch
        B, T = self.shape
        wire.read_done(self.server.stdout, B, T, V)
        half = (self.replies % 2) * (self.buffer.size // 2)
        self.replies += 1
        return self.buffer.tensor(torch.float32, (B, T, V), offset=half).clone()


def batch_input(batch: list[Request], sets: list[EvalSet], batch_size: int, rng: random.Random) -> np.ndarray:
    """The token ids of a batch of requests, padded to `batch_size` rows with copies of its first."""
    x = np.stack([request_input(r, sets, rng) for r in batch])
    return np.concatenate([x, np.repeat(x[:1], batch_size - len(batch), axis=0)]) if len(batch) < batch_size else x


def evaluate(logits_of, sets: list[EvalSet], batch_size: int, tolerance: float, device: str = "cpu",
             rng: random.Random | None = None) -> dict:
    """Score every set through `logits_of` (PipeLogits or SharedLogits); raise EvaluationError if a
    probe fails.

    Every request, probe or not, is scored against its row's real targets: a scored row adds its
    masked sum, and a probed row keeps its per-position values for the probes. Those values are
    all the metric depends on, so a probe compares exactly what could be forged (and keeps 8
    bytes a position, not a row of logits)."""
    import torch

    rng = rng or random.SystemRandom()
    requests, probes = plan_requests(sets, rng)
    probed_rows = {p.row for p in probes}
    nats = [torch.zeros(len(s.rows), dtype=torch.float64, device=device) for s in sets]
    kept: dict[tuple[str, int, int], object] = {}     # per-position nats of probed rows, by (kind, row, cut)
    V = sets[0].vocab_size
    targets = [torch.from_numpy(s.rows[:, 1:]).to(device) for s in sets]
    masks = [torch.from_numpy(s.mask).to(device) for s in sets]
    batches = [requests[start:start + batch_size] for start in range(0, len(requests), batch_size)]
    logits_of.submit(batch_input(batches[0], sets, batch_size, rng))
    for index, batch in enumerate(batches):
        logits = logits_of.result(V)[:len(batch)]
        if index + 1 < len(batches):      # the server computes the next batch while this one is scored
            logits_of.submit(batch_input(batches[index + 1], sets, batch_size, rng))
        if not torch.isfinite(logits).all():
            raise EvaluationError("the model returned non-finite logits")
        batch_targets = torch.stack([targets[r.set_index][r.row] for r in batch])
        per_position = position_nats(logits, batch_targets)
        for i, request in enumerate(batch):
            if request.kind == "score":
                nats[request.set_index][request.row] = (per_position[i] * masks[request.set_index][request.row]).sum()
            if request.set_index == 0 and request.row in probed_rows:
                kept[(request.kind, request.row, request.cut)] = per_position[i]
    check_probes(kept, probes, tolerance)
    result = {f"{s.name}_units": s.units for s in sets}
    for s, n in zip(sets, nats):
        result[s.name] = float(n.sum().item() / (math.log(2) * s.units))
    result["probes"] = len(probes)
    return result


def check_probes(kept: dict, probes: list[Request], tolerance: float) -> None:
    """Every probe against the values that its row was scored with (copies first: a model that
    mixes rows or is not deterministic fails those, whatever else it does)."""
    for probe in sorted(probes, key=lambda p: p.kind != "copy"):
        reference = kept[("score", probe.row, -1)]
        seen = kept[(probe.kind, probe.row, probe.cut)]
        if probe.kind == "cut":
            moved = float((seen[:probe.cut + 1] - reference[:probe.cut + 1]).abs().max())
            if not moved <= tolerance:
                raise EvaluationError(
                    f"causality rule: changing the tokens after position {probe.cut} of a validation row moved "
                    f"its loss at positions <= {probe.cut} by {moved:.3g} nats (tolerance {tolerance:g}); "
                    "the model sees the future (or remembers what it was shown)")
        else:
            moved = float((seen - reference).abs().max())
            if not moved <= tolerance:
                raise EvaluationError(
                    f"independence rule: the same validation row scored {moved:.3g} nats apart in two batches "
                    f"(tolerance {tolerance:g}); rows of a batch must not affect each other and the model "
                    "must be deterministic (eval mode, no dropout)")


# ---------------------------------------------------------------- the process

def start_server(argv: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr,
                            start_new_session=True, pass_fds=pass_fds)


def wait_for_go() -> bool:
    """True once the worker says the checkpoint is there; False if it closes stdin instead."""
    return sys.stdin.readline().strip() == "go"


def share_buffer(sock: socket.socket, batch_size: int, T: int, V: int):
    """A GPU buffer for two batches of logits, its descriptor sent to the server."""
    from prepare import cuda_share

    buffer = cuda_share.allocate(2 * 4 * batch_size * T * V)      # two halves: one scored, one written
    socket.send_fds(sock, [struct.pack("<Q", buffer.size)], [buffer.fd])
    os.close(buffer.fd)
    buffer.fd = -1
    return buffer


def run(args) -> dict:
    import torch

    sets = task_sets(args.task, args.holdout_tokens)
    server_argv = json.loads(args.server_argv_json) if args.server_argv_json else \
        [sys.executable, "-m", "prepare.model_server", args.train_file, args.checkpoint, args.device]
    batch_size = args.batch_size or DEFAULT_BATCH[args.device]
    length, vocab = sets[0].rows.shape[1] - 1, sets[0].vocab_size      # of every batch's logits
    ours, theirs = socket.socketpair() if args.device == "cuda" else (None, None)
    if theirs is not None:
        server_argv = [*server_argv, "--share-socket", str(theirs.fileno())]
    if args.warmup_checkpoint and args.device == "cuda":      # compiles during the training (model_server)
        server_argv += ["--warmup", args.warmup_checkpoint, str(batch_size), str(length), str(vocab)]
    server = start_server(server_argv, pass_fds=(theirs.fileno(),) if theirs is not None else ())
    if theirs is not None:
        theirs.close()
    buffer = None
    if args.device == "cuda":
        torch.zeros(1, device="cuda")    # the CUDA context, made before "go" like the server's
    try:
        if args.wait_for_go and not wait_for_go():
            return {}
        started = time.perf_counter()
        wire.write_magic(server.stdin, wire.LOAD)
        if ours is not None:
            buffer = share_buffer(ours, batch_size, length, vocab)
        wire.read_ready(server.stdout)
        loaded = time.perf_counter()
        logits_of = SharedLogits(server, buffer) if buffer is not None else PipeLogits(server)
        with torch.no_grad():
            result = evaluate(logits_of, sets, batch_size, TOLERANCE[args.device], device=args.device)
    except wire.ProtocolError as exc:
        raise EvaluationError(f"protocol rule: the model server sent what the protocol does not allow ({exc}); "
                              "only prepare/model_server.py may write to its output") from None
    except (wire.WireError, BrokenPipeError) as exc:
        raise EvaluationError(f"the model server failed: {exc}") from None
    finally:
        _stop(server)
        if buffer is not None:
            buffer.close()
    result["metric"] = result.pop("val")
    result["load_seconds"] = loaded - started
    result["seconds"] = time.perf_counter() - started
    return result


def _stop(server: subprocess.Popen) -> None:
    try:
        server.stdin.close()
    except OSError:
        pass
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Score a trained checkpoint on the fixed side (the trusted evaluator).")
    parser.add_argument("--task", default="climbmix", choices=("climbmix", "enwik8"))
    parser.add_argument("--train-file", required=True, help="the child's committed train file (defines load_model)")
    parser.add_argument("--checkpoint", required=True, help="what the training saved at AUTORESEARCH_CHECKPOINT")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=0, help="rows per request (speed only)")
    parser.add_argument("--holdout-tokens", type=int, default=None,
                        help=f"scored holdout targets (default: 1/{HOLDOUT_SHARE} of the validation's; 0: none)")
    parser.add_argument("--server-argv-json", default="",
                        help="the model server's command line as a JSON list (the worker wraps it in the sandbox)")
    parser.add_argument("--warmup-checkpoint", default=os.environ.get("AUTORESEARCH_WARMUP_CHECKPOINT", ""),
                        help="where the training may save an early copy of its model (default: "
                             "$AUTORESEARCH_WARMUP_CHECKPOINT): on a GPU the server compiles on it before 'go'; "
                             "never scored")
    parser.add_argument("--wait-for-go", action="store_true",
                        help="start at once, load the model only after a line 'go' on stdin")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (EvaluationError, OSError, ValueError) as exc:
        print(json.dumps({"error": " ".join(str(exc).split())}), flush=True)
        return 1
    if result:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
