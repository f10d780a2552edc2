"""bench/attention_kernels.py's cudnn_chunks candidate: sliding-window attention built from causal
pieces (chunks, the previous chunk reversed, merged by log-sum-exp, ring-attention backward). Its
cuDNN kernels are replaced by their math on a CPU, so what is tested is the decomposition: the
GPU timing in BENCHMARKS.md is of a kernel that computes the right thing."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def kernels():
    sys.path.insert(0, str(BENCH))  # it imports profile_engine, its neighbour
    spec = importlib.util.spec_from_file_location("bench_attention_kernels_under_test", BENCH / "attention_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _causal_scores(q, k):
    W = q.size(2)
    scores = torch.einsum("bmqhd,bmkhd->bmhqk", q, k) * q.size(-1) ** -0.5
    return scores.masked_fill(~torch.ones(W, W, dtype=torch.bool).tril(), float("-inf"))


def math_causal(q, k, v):
    """cudnn_causal's contract: causal attention per chunk, (B, m, W, H, D) -> out, lse (B, m, W, H, 1)."""
    scores = _causal_scores(q, k)
    lse = scores.logsumexp(-1)                                   # (B, m, H, W)
    out = torch.einsum("bmhqk,bmkhd->bmqhd", (scores - lse[..., None]).exp(), v)
    return out, lse.transpose(2, 3).unsqueeze(-1)


def math_causal_backward(grad_out, q, k, v, out, lse):
    """Flash attention's backward from a given output and log-sum-exp (those of the whole softmax)."""
    probs = (_causal_scores(q, k) - lse.squeeze(-1).transpose(2, 3)[..., None]).exp()
    delta = (grad_out * out).sum(-1).transpose(2, 3)[..., None]
    dscores = probs * (torch.einsum("bmqhd,bmkhd->bmhqk", grad_out, v) - delta) * q.size(-1) ** -0.5
    return (torch.einsum("bmhqk,bmkhd->bmqhd", dscores, k), torch.einsum("bmhqk,bmqhd->bmkhd", dscores, q),
            torch.einsum("bmhqk,bmqhd->bmkhd", probs, grad_out))


def masked_attention(q, k, v, window):
    i = torch.arange(q.size(1))
    distance = i[:, None] - i[None, :]
    mask = (distance >= 0) & (distance <= window)
    out = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask)
    return out.transpose(1, 2)


@pytest.mark.parametrize("chunks", [1, 2, 4])
def test_chunked_window_equals_masked_attention(kernels, monkeypatch, chunks):
    monkeypatch.setattr(kernels, "cudnn_causal", math_causal)
    monkeypatch.setattr(kernels, "cudnn_causal_backward", math_causal_backward)
    torch.manual_seed(4)
    window = 8
    q, k, v = (torch.randn(2, chunks * window, 3, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    weights = torch.randn(2, chunks * window, 3, 16, dtype=torch.float64)
    results = []
    for attend in (kernels.cudnn_chunks, masked_attention):
        out = attend(q, k, v, window)
        results.append([out, *torch.autograd.grad((out * weights).sum(), (q, k, v))])
    for chunked, masked in zip(*results):
        torch.testing.assert_close(chunked, masked)


def test_without_a_gpu_it_says_so(kernels, capsys):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert kernels.main(["--rows", "1"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
