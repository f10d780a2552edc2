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


def check_causality(model, row: torch.Tensor, vocab_size: int, tolerance: float = 1e-3) -> None:
    """Perturb every token after position t of one row; the losses at positions <= t must not move."""
    x, y = row[None, :-1].contiguous(), row[None, 1:].contiguous()
    t = x.shape[1] // 2
    shift = torch.arange(1, x.shape[1] - t, device=row.device) % (vocab_size - 1) + 1
    x_perturbed = x.clone()
    x_perturbed[0, t + 1:] = (x[0, t + 1:] + shift) % vocab_size   # every later token changes
    before = _token_losses(model, x, y)[0, :t + 1]
    after = _token_losses(model, x_perturbed, y)[0, :t + 1]
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
    (0 bytes) are excluded. Runs under no_grad; the caller provides autocast.
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
    check_causality(model, rows[0], tokenizer.get_vocab_size())
    # One float64 sum per row, added up in a fixed order at the end: the result does not depend
    # on how the rows were chunked into batches.
    row_nats = torch.zeros(n_rows, dtype=torch.float64, device=device)
    row_bytes = torch.zeros(n_rows, dtype=torch.int64, device=device)
    for start in range(0, n_rows, batch_size):
        chunk = rows[start:start + batch_size]
        x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
        nbytes = token_bytes[y]
        losses = _token_losses(model, x, y).double()
        row_nats[start:start + len(chunk)] = torch.where(nbytes > 0, losses, 0.0).sum(dim=1)
        row_bytes[start:start + len(chunk)] = nbytes.sum(dim=1)
    total_bytes = row_bytes.sum().item()
    if total_bytes == 0:
        raise ValueError("the validation rows contain no scored bytes")
    return row_nats.sum().item() / (math.log(2) * total_bytes)
