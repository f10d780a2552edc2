"""engine/train.py in-process: model shape, attention windows, Polar Express, optimizer, schedules.

Its plumbing (prepare/runtime.py) is tested in test_prepare_runtime.py.

The train file is loaded from its path (as the driver runs it, never as a package), once.
"""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import pytest
import torch

TRAIN_FILE = Path(__file__).resolve().parents[1] / "engine" / "train.py"
# Uncompiled FlexAttention on the CPU is the reference path here; its speed warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


@pytest.fixture(scope="module")
def train():
    saved = dict(os.environ)   # the file sets compile-cache variables at import: keep them local
    try:
        spec = importlib.util.spec_from_file_location("engine_train_under_test", TRAIN_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    torch.set_num_threads(1)
    return module


def tiny_config(train, **overrides):
    fields = dict(sequence_len=64, vocab_size=97, n_layer=2, n_head=4, n_kv_head=4, n_embd=64,
                  window_pattern="SL")
    fields.update(overrides)
    return train.GPTConfig(**fields)


# --- model shape ----------------------------------------------------------------------------

def test_baseline_matches_the_reference_model(train):
    """Depth 8, vocab 8192, T 2048: the reference's 50,332,176 parameters and ~2.39e8 FLOPs/token."""
    config = train.build_config(8192, 2048)
    assert (config.n_layer, config.n_embd, config.n_head, config.n_kv_head) == (8, 512, 4, 4)
    with torch.device("meta"):
        model = train.GPT(config, train.Attention("sdpa"))
    assert model.num_params() == 50_332_176
    assert model.estimate_flops() == pytest.approx(2.39e8, rel=0.01)
    assert model.window_sizes == [1024, 1024, 1024, 2048, 1024, 1024, 1024, 2048]
    assert sorted(model.value_embeds.keys(), key=int) == ["1", "3", "5", "7"]


def test_model_dim_rounds_up_to_whole_heads(train, monkeypatch):
    monkeypatch.setattr(train, "DEPTH", 9)
    monkeypatch.setattr(train, "ASPECT_RATIO", 57)   # 513 -> 640 (the mar8 session's surprise)
    config = train.build_config(8192, 2048)
    assert (config.n_embd, config.n_head) == (640, 5)


def test_bad_hyperparameters_are_config_errors(train, monkeypatch):
    monkeypatch.setattr(train, "N_KV_HEAD", 3)   # 4 query heads
    with pytest.raises(train.ConfigError, match="N_KV_HEAD"):
        train.build_config(8192, 2048)
    monkeypatch.setattr(train, "N_KV_HEAD", 0)
    monkeypatch.setattr(train, "WINDOW_PATTERN", "SXL")
    with pytest.raises(train.ConfigError, match="WINDOW_PATTERN"):
        train.build_config(8192, 2048)


def test_last_layer_always_sees_the_whole_context(train):
    assert train.window_sizes(tiny_config(train, n_layer=3, window_pattern="S")) == [32, 32, 64]


# --- attention windows ----------------------------------------------------------------------

def layer_output(train, backend, x, window, n_kv_head=4):
    torch.manual_seed(0)
    config = tiny_config(train, n_kv_head=n_kv_head)
    attn = train.CausalSelfAttention(config, 0, train.Attention(backend))
    for linear in (attn.c_q, attn.c_k, attn.c_v, attn.c_proj):
        torch.nn.init.normal_(linear.weight, std=0.2)
    model = train.GPT(config, train.Attention(backend))  # only for its rotary tables
    cos_sin = model.cos[:, :x.size(1)].float(), model.sin[:, :x.size(1)].float()
    with torch.no_grad():
        return attn(x, None, cos_sin, window)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("n_kv_head", [4, 2])   # 2: grouped-query attention
def test_sliding_window_hides_tokens_outside_it(train, backend, n_kv_head):
    window, query = 8, 40
    torch.manual_seed(1)
    x = torch.randn(1, 64, 64)
    base = layer_output(train, backend, x, window, n_kv_head)[0, query]

    def output_after_changing(position):
        changed = x.clone()
        changed[0, position] += 3.0
        return layer_output(train, backend, changed, window, n_kv_head)[0, query]

    assert torch.equal(output_after_changing(query - window - 1), base)      # just outside: no effect
    assert torch.equal(output_after_changing(query + 1), base)               # the future: no effect
    assert (output_after_changing(query - window) - base).abs().max() > 1e-3  # oldest key inside
    assert (output_after_changing(query - 1) - base).abs().max() > 1e-3


def test_flex_and_sdpa_compute_the_same_attention(train):
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 64, 4, 16), torch.randn(2, 64, 2, 16), torch.randn(2, 64, 2, 16)
    for window in (5, 32, 64):
        flex = train.Attention("flex")(q, k, v, window)
        sdpa = train.Attention("sdpa")(q, k, v, window)
        torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-4)


def test_forced_attention_backend_is_validated(train, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_ATTENTION", "flash9")
    with pytest.raises(train.ConfigError, match="fa3, flex or sdpa"):
        train.select_attention("cpu")
    monkeypatch.setenv("AUTORESEARCH_ATTENTION", "fa3")
    with pytest.raises(train.ConfigError, match="CUDA"):
        train.select_attention("cpu")
    monkeypatch.setenv("AUTORESEARCH_ATTENTION", "flex")   # no FlexAttention backward on a CPU
    with pytest.raises(train.ConfigError, match="CUDA"):
        train.select_attention("cpu")
    monkeypatch.setenv("AUTORESEARCH_ATTENTION", "sdpa")
    assert train.select_attention("cpu").backend == "sdpa"
    monkeypatch.delenv("AUTORESEARCH_ATTENTION")
    assert train.select_attention("cpu").backend == "sdpa"


# --- optimizer -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(64, 64), (192, 48), (48, 192)])
def test_polar_express_is_near_orthogonal(train, shape):
    """Singular values >= 1e-3 of the Frobenius norm map into the documented band [0.8, 1.2],
    and the result is close to the true polar factor U V^T."""
    torch.manual_seed(3)
    rows, cols = shape
    U, _, Vh = torch.linalg.svd(torch.randn(rows, cols), full_matrices=False)
    n = min(rows, cols)
    S = torch.logspace(-2, 0, n)          # condition number 100; min S / ||S|| > 1e-3
    G = torch.stack([(U * S) @ Vh, 5.0 * (U * S.flip(0)) @ Vh])  # the input's scale must not matter
    X = train.polar_express(G).float()
    singular_values = torch.linalg.svdvals(X)
    assert singular_values.min() > 0.8 and singular_values.max() < 1.2
    polar = U @ Vh
    assert (X[0] - polar).norm() / polar.norm() < 0.2


def train_tiny_model(train, steps):
    torch.manual_seed(4)
    config = tiny_config(train)
    model = train.GPT(config, train.Attention("sdpa"))
    model.init_weights()
    optimizer = model.setup_optimizer()
    tokens = torch.arange(8 * 65).reshape(8, 65) % 7 + 3   # a short repeating pattern: learnable
    x, y = tokens[:, :-1], tokens[:, 1:]
    losses = []
    for step in range(steps):
        loss = model(x, y)
        loss.backward()
        for group in optimizer.param_groups:
            if group["kind"] == "muon":
                group["momentum"] = train.muon_momentum(step)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_loss_falls_on_a_tiny_corpus(train):
    losses = train_tiny_model(train, 25)
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] > 4.0                 # about ln(97) at init
    assert losses[-1] < 0.25 * losses[0]


def test_every_parameter_is_in_exactly_one_group(train):
    model = train.GPT(tiny_config(train, n_kv_head=2), train.Attention("sdpa"))
    optimizer = model.setup_optimizer()
    grouped = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    muon_shapes = [tuple(g["params"][0].shape) for g in optimizer.param_groups if g["kind"] == "muon"]
    assert len(muon_shapes) == len(set(muon_shapes))   # one stacked group per shape
    assert all(len(s) == 2 for s in muon_shapes)


# --- schedules -------------------------------------------------------------------------------

def test_schedules(train):
    assert train.lr_multiplier(0.0) == 1.0 and train.lr_multiplier(0.49) == 1.0
    assert train.lr_multiplier(0.75) == pytest.approx(0.5)
    assert train.lr_multiplier(1.0) == pytest.approx(train.FINAL_LR_FRAC)
    assert train.muon_momentum(0) == pytest.approx(0.85)
    assert train.muon_momentum(150) == pytest.approx(0.90)
    assert train.muon_momentum(10_000) == pytest.approx(0.95)
    assert train.muon_weight_decay(0.25) == pytest.approx(0.75 * train.WEIGHT_DECAY)


# --- torch.compile (the GPU path, traced on the CPU) -----------------------------------------

def test_model_and_optimizer_compile_without_graph_breaks(train):
    """fullgraph=True fails on any graph break; aot_eager traces as the GPU compile does, minus codegen."""
    config = tiny_config(train, n_kv_head=2)
    attention = train.Attention("sdpa")
    model = train.GPT(config, attention)
    model.init_weights()
    compiled = torch.compile(model, dynamic=False, fullgraph=True, backend="aot_eager")
    x = torch.randint(0, config.vocab_size, (2, config.sequence_len))
    compiled(x, x).backward()
    optimizer = model.setup_optimizer()
    optimizer._adamw_step = torch.compile(train.adamw_step, dynamic=False, fullgraph=True, backend="aot_eager")
    optimizer._muon_step = torch.compile(train.muon_step, dynamic=False, fullgraph=True, backend="aot_eager")
    before = model.transformer.h[0].mlp.c_fc.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.transformer.h[0].mlp.c_fc.weight)
    with torch.no_grad():   # the evaluation's call, with FlexAttention's masks built beforehand
        flex = train.Attention("flex")
        flex_model = train.GPT(config, flex)
        flex_model.load_state_dict(model.state_dict())
        for window in set(flex_model.window_sizes):
            flex.mask(config.sequence_len, window, "cpu")
        losses = torch.compile(flex_model, dynamic=False, fullgraph=True, backend="aot_eager")(x, x, reduction="none")
        torch.testing.assert_close(losses, model(x, x, reduction="none"), atol=1e-4, rtol=1e-4)
