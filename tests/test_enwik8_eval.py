"""The fixed enwik8 metric: which characters it scores, its independence from the caller's
batch size and training context, and the causality guard."""
import math

import pytest
import torch
from x_transformers import Decoder, TransformerWrapper

import prepare.enwik8 as enwik8
from enwik8_support import load_train_module, use_small_evaluation


@pytest.fixture
def small_eval(enwik8_cache, monkeypatch):
    """The shared prepared stub data and a small, unaligned evaluation (64-char windows, stride 32)."""
    use_small_evaluation(monkeypatch, enwik8_cache)


def tiny_transformer(seed: int = 0) -> TransformerWrapper:
    torch.manual_seed(seed)
    net = TransformerWrapper(num_tokens=256, max_seq_len=64,
                             attn_layers=Decoder(dim=32, depth=1, heads=2, rotary_pos_emb=True, attn_flash=True))
    return net.eval()


class Spy:
    """Records every batch the metric feeds the model."""

    def __init__(self, model_fn):
        self.model_fn, self.inputs = model_fn, []

    def __call__(self, x):
        self.inputs.append(x.clone())
        return self.model_fn(x)

    def windows(self) -> torch.Tensor:
        return torch.cat(self.inputs[2:])          # the first two calls are the causality guard


@pytest.mark.parametrize("n_val,n_chars,seq_len,stride", [
    (10_000, 3_001, 64, 32), (10_000, 4_096, 64, 64), (500, 10_000, 64, 16), (65, 100, 64, 32)])
def test_plan_scores_each_target_once_with_enough_context(n_val, n_chars, seq_len, stride):
    plan, n = enwik8.eval_plan(n_val, n_chars, seq_len, stride)
    assert n == min(n_chars, n_val - 1)
    scored = []
    for i, (start, first) in enumerate(plan):
        assert 0 <= start and start + seq_len + 1 <= n_val
        assert first == 0 if i == 0 else first >= seq_len - stride   # context of every later target
        scored += [start + 1 + offset for offset in range(first, seq_len)]
    assert scored == list(range(1, n + 1))


def test_plan_refuses_a_val_split_shorter_than_a_window():
    with pytest.raises(ValueError, match="too few characters to score: 49"):
        enwik8.eval_plan(50, 1_000, 64, 32)
    with pytest.raises(ValueError, match="EVAL_CHARS 10"):
        enwik8.eval_plan(10_000, 10, 64, 32)


def test_batch_size_changes_nothing(small_eval):
    net = tiny_transformer()
    spies = {b: Spy(net) for b in (1, 7, 200)}
    results = {b: enwik8.evaluate_bpc(spy, b, "cpu") for b, spy in spies.items()}
    assert math.isfinite(results[1]) and 5 < results[1] < 12   # untrained: near 8 bits
    assert results[7] == pytest.approx(results[1], rel=1e-6)
    assert results[200] == pytest.approx(results[1], rel=1e-6)
    assert torch.equal(spies[1].windows(), spies[200].windows())


def test_matches_a_direct_per_character_computation(small_eval):
    """Scoring by hand: every target 1..EVAL_CHARS, context = its own window, once each."""
    net = tiny_transformer()
    val = torch.from_numpy(enwik8.load_split("val").copy()).long()
    plan, n = enwik8.eval_plan(len(val), 3_001, 64, 32)
    nats = 0.0
    with torch.no_grad():
        for start, first in plan:
            logp = torch.log_softmax(net(val[None, start:start + 64]).float(), -1)[0]
            targets = val[start + 1:start + 65]
            nats -= logp[first:].gather(-1, targets[first:, None]).sum().item()
    assert enwik8.evaluate_bpc(net, 16, "cpu") == pytest.approx(nats / math.log(2) / n, rel=1e-6)


def test_training_context_of_the_train_file_changes_nothing(small_eval, monkeypatch):
    train = load_train_module()
    monkeypatch.setattr(train, "DIM", 32)
    monkeypatch.setattr(train, "DEPTH", 1)
    results = {}
    for seq_len in (16, 256):
        monkeypatch.setattr(train, "SEQ_LEN", seq_len)
        torch.manual_seed(0)
        model = train.build_model().eval()
        spy = Spy(lambda x: model.net(x))
        results[seq_len] = (enwik8.evaluate_bpc(spy, train.EVAL_BATCH_SIZE, "cpu"), spy.windows())
    (bpc_a, windows_a), (bpc_b, windows_b) = results[16], results[256]
    assert windows_a.shape[1] == 64 and torch.equal(windows_a, windows_b)
    assert bpc_a == pytest.approx(bpc_b, rel=1e-6)


def test_guard_passes_an_honest_model_and_refuses_leaks(small_eval):
    net = tiny_transformer()
    enwik8.evaluate_bpc(net, 8, "cpu")             # no error

    peek_ahead = lambda x: net(torch.roll(x, -1, dims=1))          # sees the character it predicts
    with pytest.raises(enwik8.CausalityError, match="causality guard"):
        enwik8.evaluate_bpc(peek_ahead, 8, "cpu")

    def batch_mixer(x):                                            # reads the other windows of the batch
        logits = net(x)
        return logits + 0.1 * logits.mean(dim=0, keepdim=True)
    with pytest.raises(enwik8.CausalityError):
        enwik8.evaluate_bpc(batch_mixer, 8, "cpu")


def test_guard_refuses_a_model_left_in_training_mode(small_eval):
    torch.manual_seed(0)
    dropout_net = TransformerWrapper(num_tokens=256, max_seq_len=64, emb_dropout=0.5,
                                     attn_layers=Decoder(dim=32, depth=1, heads=2)).train()
    with pytest.raises(enwik8.CausalityError, match="deterministic"):
        enwik8.evaluate_bpc(dropout_net, 8, "cpu")


def test_wrong_logits_shape_is_a_clear_error(small_eval):
    with pytest.raises(ValueError, match="logits of shape"):
        enwik8.evaluate_bpc(lambda x: torch.zeros(x.shape[0], x.shape[1], 10), 8, "cpu")


def test_random_windows_are_contiguous_slices_and_seeded(small_eval):
    train = enwik8.load_split("train")
    batches = enwik8.random_windows("train", 4, 32, "cpu", seed=3)
    first = next(batches)
    assert first.shape == (4, 33) and first.dtype == torch.int64
    text = bytes(train)
    for row in first:
        assert bytes(row.to(torch.uint8).tolist()) in text
    assert torch.equal(first, next(enwik8.random_windows("train", 4, 32, "cpu", seed=3)))
    assert not torch.equal(first, next(batches))
