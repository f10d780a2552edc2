"""evaluate_bpb: a fixed row set whatever the batch size, specials excluded, causality guard."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prepare import CausalityError, Tokenizer, evaluate_bpb, get_token_bytes
from prepare.dataloader import pack_rows

SEQ, ROWS = 64, 40
EVAL = dict(eval_tokens=SEQ * ROWS, seq_len=SEQ)


class PrefixMeanLM(torch.nn.Module):
    """A tiny LM whose state at t is the mean embedding of tokens 0..t (causal), or of the whole
    row when `leak` is set (it sees the future)."""

    def __init__(self, vocab_size: int, leak: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab_size, 16)
        self.head = torch.nn.Linear(16, vocab_size)
        self.leak = leak

    def forward(self, x, y, reduction="mean"):
        h = self.embed(x)
        if self.leak:
            h = h + h.mean(dim=1, keepdim=True)
        else:
            h = h.cumsum(dim=1) / torch.arange(1, x.shape[1] + 1, device=x.device)[None, :, None]
        logits = self.head(h)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), reduction=reduction)


class UniformLM(torch.nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, x, y, reduction="mean"):
        logits = torch.zeros(*x.shape, self.vocab_size)
        return F.cross_entropy(logits.view(-1, self.vocab_size), y.reshape(-1), reduction=reduction)


@pytest.fixture(scope="module")
def tokenizer(prepared_cache):
    return Tokenizer.from_directory()


def test_metric_does_not_depend_on_the_batch_size(tokenizer):
    model = PrefixMeanLM(tokenizer.get_vocab_size())
    results = {bs: evaluate_bpb(model, tokenizer, bs, **EVAL) for bs in (ROWS, 8, 7, 64)}   # 7 does not divide 40
    assert results[8] == results[7] == results[ROWS] == results[64]
    assert 0 < results[8] < 20


def test_every_call_has_the_batch_shape_so_compiled_models_do_not_recompile(tokenizer):
    shapes = []

    class Recording(PrefixMeanLM):
        def forward(self, x, y, reduction="mean"):
            shapes.append(tuple(x.shape))
            return super().forward(x, y, reduction)

    evaluate_bpb(Recording(tokenizer.get_vocab_size()), tokenizer, 7, **EVAL)   # 40 = 5 * 7 + 5
    assert set(shapes) == {(7, SEQ)} and len(shapes) == 3 + 6   # causality check, then 6 chunks
    shapes.clear()
    evaluate_bpb(Recording(tokenizer.get_vocab_size()), tokenizer, 64, **EVAL)   # more than the 40 rows
    assert set(shapes) == {(64, SEQ)}


def test_uniform_model_scores_log2_vocab_per_scored_byte(tokenizer):
    vocab = tokenizer.get_vocab_size()
    bpb = evaluate_bpb(UniformLM(vocab), tokenizer, 16, **EVAL)
    rows = torch.from_numpy(pack_rows(tokenizer, ROWS, SEQ))
    targets = rows[:, 1:]
    nbytes = get_token_bytes("cpu")[targets]
    scored = int((nbytes > 0).sum())
    assert scored < targets.numel(), "rows hold BOS targets, which must not be scored"
    expected = scored * math.log(vocab) / (math.log(2) * int(nbytes.sum()))
    assert bpb == pytest.approx(expected, rel=1e-6)   # the model's losses are float32


def test_a_model_that_sees_the_future_is_refused(tokenizer):
    with pytest.raises(CausalityError, match="sees the future"):
        evaluate_bpb(PrefixMeanLM(tokenizer.get_vocab_size(), leak=True), tokenizer, 8, **EVAL)


def test_a_wrongly_shaped_loss_is_refused(tokenizer):
    class MeanOnly(PrefixMeanLM):
        def forward(self, x, y, reduction="mean"):
            return super().forward(x, y, reduction="mean")

    with pytest.raises(ValueError, match="one loss per target"):
        evaluate_bpb(MeanOnly(tokenizer.get_vocab_size()), tokenizer, 8, **EVAL)


def test_a_random_model_is_refused_with_its_own_reason(tokenizer):
    class Dropout(PrefixMeanLM):
        def forward(self, x, y, reduction="mean"):
            return F.dropout(super().forward(x, y, reduction), p=0.5, training=True)

    with pytest.raises(CausalityError, match="dropout"):
        evaluate_bpb(Dropout(tokenizer.get_vocab_size()), tokenizer, 8, **EVAL)
