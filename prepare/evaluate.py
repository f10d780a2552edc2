"""The fixed metric: bits per byte on the validation shard, whatever the train file does.

The scored rows are built once, independent of the caller's batch size (the reference's set
depended on it), and a black-box causality check runs first, because the model's forward - mask
and loss included - lives in the agent-owned train file.
"""
from __future__ import annotations

import math

import torch

from . import constants
from .dataloader import pack_rows
from .tokenizer import get_token_bytes


class CausalityError(RuntimeError):
    """The model's loss at a position depends on tokens after it."""


def _token_losses(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = model(x, y, reduction="none")
    if loss.numel() != y.numel():
        raise ValueError(f"model(x, y, reduction='none') must return one loss per target ({y.numel()}), got shape {tuple(loss.shape)}")
    return loss.reshape(y.shape).float()


def check_causality(model, rows: torch.Tensor, vocab_size: int, tolerance: float = 1e-3) -> None:
    """Perturb every token after position t of each row; the losses at positions <= t must not move."""
    x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
    t = x.shape[1] // 2
    shift = torch.arange(1, x.shape[1] - t, device=rows.device) % (vocab_size - 1) + 1
    x_perturbed = x.clone()
    x_perturbed[:, t + 1:] = (x[:, t + 1:] + shift) % vocab_size   # every later token changes
    before = _token_losses(model, x, y)[:, :t + 1]
    repeat = _token_losses(model, x, y)[:, :t + 1]
    if not (repeat - before).abs().max().item() <= tolerance:
        raise CausalityError("causality check impossible: the same input gave different losses twice "
                             "(dropout or another random layer left on in evaluation?)")
    after = _token_losses(model, x_perturbed, y)[:, :t + 1]
    change = (after - before).abs().max().item()
    if not math.isfinite(change) or change > tolerance:
        raise CausalityError(
            f"causality check failed: changing tokens after position {t} moved the loss at positions <= {t} "
            f"by up to {change:.3g} nats (tolerance {tolerance}); the model sees the future, so val_bpb would be invalid")


@torch.no_grad()
def evaluate_bpb(model, tokenizer, batch_size: int, *, eval_tokens: int | None = None,
                 seq_len: int | None = None, device=None) -> float:
    """Bits per byte over the first eval_tokens // seq_len packed validation rows.

    `model(x, y, reduction='none')` returns per-target losses in nats; targets that are specials
    (0 bytes) are excluded. Every call has shape [batch_size, seq_len] (the last chunk is topped
    up with rows from the start and their losses ignored), so a compiled model never recompiles.
    Runs under no_grad; the caller provides autocast.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    T = seq_len or constants.MAX_SEQ_LEN
    n_rows = max(1, (eval_tokens or constants.EVAL_TOKENS) // T)
    if device is None:
        param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = param.device if param is not None else torch.device("cpu")
    rows = torch.from_numpy(pack_rows(tokenizer, n_rows, T, "val")).to(device)
    token_bytes = get_token_bytes(device)
    full_batch = lambda start: rows[torch.arange(start, start + batch_size, device=device) % n_rows]
    check_causality(model, full_batch(0), tokenizer.get_vocab_size())
    # One float64 sum per row, added up in a fixed order at the end: the result does not depend
    # on how the rows were chunked into batches.
    row_nats = torch.zeros(n_rows, dtype=torch.float64, device=device)
    row_bytes = torch.zeros(n_rows, dtype=torch.int64, device=device)
    for start in range(0, n_rows, batch_size):
        real = min(batch_size, n_rows - start)
        chunk = full_batch(start)
        x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
        nbytes = token_bytes[y][:real]
        losses = _token_losses(model, x, y)[:real].double()
        row_nats[start:start + real] = torch.where(nbytes > 0, losses, 0.0).sum(dim=1)
        row_bytes[start:start + real] = nbytes.sum(dim=1)
    total_bytes = row_bytes.sum().item()
    if total_bytes == 0:
        raise ValueError("the validation rows contain no scored bytes")
    return row_nats.sum().item() / (math.log(2) * total_bytes)
