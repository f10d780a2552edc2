"""The model server: the only place where the child's code meets the evaluation's inputs.

Run by the trusted evaluator (`prepare/trusted_eval.py`) as a process of its own, sandboxed like a
training, with no access to the evaluation data. It starts while the training still runs: it
imports torch, makes its CUDA context and imports the child's committed train file as a module
(its `main()` does not run), so that none of this costs time after the training. On LOAD it asks
the file's `load_model(checkpoint, device)` for the trained model, and then answers each request
of token ids with the model's logits. It never sees a target, a loss or a
metric: what it computes is only ever an input to the evaluator's own scoring.

With `--warmup` (GPU), it also waits for the early copy of the model that the training may save
(AUTORESEARCH_WARMUP_CHECKPOINT, prepare/runtime.py) and runs one batch of the evaluation's shape
through a model built from it, so that torch.compile has traced and compiled the forward before
the training ends: the model rebuilt from the final checkpoint reuses that code. Only the final
checkpoint is ever scored; a missing or broken copy only leaves the compile to the scoring.

    python -m prepare.model_server TRAIN_FILE CHECKPOINT DEVICE [--share-socket FD] [--warmup PATH B T V]

The protocol (`prepare/wire.py`) runs on the stdin/stdout that the evaluator gave it; everything
the child's code prints goes to stderr (into the experiment's run.log). With `--share-socket`
(GPU), the evaluator sends the file descriptor of a GPU buffer over that Unix socket after LOAD,
and the logits are written there, in its two halves by turns, instead of through the pipe
(`prepare/cuda_share.py`).
"""
from __future__ import annotations

import importlib.util
import os
import select
import socket
import struct
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass

from prepare import wire

WARMUP_POLL_S = 0.25
WARMUP_SPARE_BYTES = 2 << 30     # left free for the training beside the warm-up, besides its own need


@dataclass
class Warmup:
    """Where the training may save its early copy, and the evaluation's batch shape (rows, length, vocab)."""
    path: str
    rows: int
    length: int
    vocab: int


def load_child(train_file: str):
    """The train file as a module named `train_under_eval` (so its `if __name__ == "__main__"` stays off)."""
    directory = os.path.dirname(os.path.abspath(train_file))
    sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location("train_under_eval", train_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "load_model", None)):
        raise RuntimeError(f"{train_file} defines no load_model(checkpoint_path, device): the evaluator "
                           "rebuilds the trained model through it (see program.md)")
    return module


def receive_buffer(share_socket: int):
    """The GPU buffer the evaluator exported: (fd, size) over the Unix socket, then mapped here."""
    from prepare import cuda_share

    with socket.socket(fileno=share_socket) as sock:
        message, fds, _, _ = socket.recv_fds(sock, 8, 1)
    if len(message) != 8 or len(fds) != 1:
        raise RuntimeError("the evaluator sent no GPU buffer")
    (size,) = struct.unpack("<Q", message)
    return cuda_share.open_shared(fds[0], size)


def serve(train_file: str, checkpoint: str, device_name: str, requests, replies, share_socket: int | None,
          warmup: Warmup | None = None) -> None:
    import numpy as np
    import torch

    # Everything that needs no checkpoint happens while the training still runs: the CUDA context
    # and the import of the child's file (an import error waits for LOAD, where it is the crash's reason).
    clock = time.perf_counter()
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.zeros(1, device=device)            # a current CUDA context for the driver calls
    early = {"CUDA context": time.perf_counter() - clock}
    try:
        child, import_error = load_child(train_file), None
    except Exception as exc:
        child, import_error = None, exc
    early["train file import"] = time.perf_counter() - clock - early["CUDA context"]
    _say_times("before LOAD", early)
    autocast = torch.amp.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    if warmup is not None and child is not None:
        warm_up_until_load(child, warmup, device, requests, autocast)
    if not wire.read_load(requests):
        return                                   # called off: the training did not produce a model
    if import_error is not None:
        raise import_error
    clock = time.perf_counter()
    shared = receive_buffer(share_socket) if share_socket is not None else None
    model = build_model(child, checkpoint, device)
    wire.write_magic(replies, wire.READY)
    _say_times("after LOAD", {"load_model": time.perf_counter() - clock})
    n = 0
    while (x := wire.read_rows(requests)) is not None:
        clock = time.perf_counter()
        logits = forward(model, torch.from_numpy(x.copy()).to(device), autocast)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"the model returned {type(logits).__name__}, not a tensor of logits")
        if logits.dim() != 3 or tuple(logits.shape[:2]) != x.shape:
            raise ValueError(f"the model returned a tensor of shape {tuple(logits.shape)} for token ids of shape "
                             f"{x.shape}: load_model's model must return logits (B, T, vocab)")
        shape = tuple(logits.shape)
        if shared is not None:       # two halves: the evaluator scores one while this writes the other
            shared.tensor(torch.float32, shape, offset=(n % 2) * (shared.size // 2)).copy_(logits)
            if device.type == "cuda":
                torch.cuda.synchronize()
            wire.write_done(replies, shape)
        else:
            wire.write_logits(replies, logits.detach().float().cpu().numpy().astype(np.float32, copy=False))
        if n == 0:
            _say_times("first batch", {"forward (compiles)": time.perf_counter() - clock})
        n += 1


def build_model(child, checkpoint: str, device):
    """The child's model from a checkpoint, in eval mode: the warm-up and the scoring build it alike."""
    model = child.load_model(checkpoint, device)
    if hasattr(model, "eval"):
        model.eval()
    return model


def forward(model, x, autocast):
    """The model's output for token ids `x` as the scoring asks for it (no grad, the evaluation's
    autocast): the warm-up runs this same call, so its compiled code is the scoring's."""
    import torch

    with torch.no_grad(), autocast:
        return model(x)


def warm_up_until_load(child, warmup: Warmup, device, requests, autocast) -> None:
    """Until the evaluator's LOAD is there to read: once the training's early copy appears, one
    forward of a batch shaped as the evaluation's (token ids int64, no grad, the same autocast), so
    the compiled code is ready; then wait. Skipped when the GPU lacks room beside the training."""
    while not select.select([requests], [], [], WARMUP_POLL_S)[0]:
        if os.path.isfile(warmup.path):
            clock = time.perf_counter()
            outcome = _warm_up(child, warmup, device, autocast)
            _say_times("warm-up", {outcome: time.perf_counter() - clock})
            return


def _warm_up(child, warmup: Warmup, device, autocast) -> str:
    import torch

    logits_bytes = 4 * warmup.rows * warmup.length * warmup.vocab
    need = 2 * os.path.getsize(warmup.path) + 3 * logits_bytes + WARMUP_SPARE_BYTES
    if device.type == "cuda" and torch.cuda.mem_get_info(device)[0] < need:
        return f"skipped, under {need / 2**30:.1f} GiB free beside the training"
    model = None
    try:
        model = build_model(child, warmup.path, device)
        forward(model, torch.zeros((warmup.rows, warmup.length), dtype=torch.int64, device=device), autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return "load and one forward (compiles)"
    except Exception as exc:       # the final checkpoint is what counts: its load reports the real error
        print(f"model server, warm-up failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return "failed (the scoring compiles instead)"
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _say_times(when: str, seconds: dict[str, float]) -> None:
    """Where the evaluation's seconds go, in the experiment's run.log (stderr)."""
    parts = ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())
    print(f"model server, {when}: {parts}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    share_socket = warmup = None
    if "--share-socket" in args:
        at = args.index("--share-socket")
        share_socket = int(args[at + 1])
        del args[at:at + 2]
    if "--warmup" in args:
        at = args.index("--warmup")
        warmup = Warmup(args[at + 1], *(int(n) for n in args[at + 2:at + 5]))
        del args[at:at + 5]
    train_file, checkpoint, device = args[:3]
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)                      # the child's prints must not corrupt the protocol
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    try:
        serve(train_file, checkpoint, device, requests, replies, share_socket, warmup)
    except Exception as exc:           # the child's error, sent as the reason of the crash
        traceback.print_exc()
        try:
            wire.write_failure(replies, f"{type(exc).__name__}: {exc}")
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
