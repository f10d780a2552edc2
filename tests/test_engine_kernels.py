"""engine/train.py's own kernels on a CPU: the softcapped loss's backward, the ReLU² MLP's Triton
kernels (under Triton's interpreter, in float32, which it can run) and the start-up check that
keeps those kernels off an MLP whose formula an agent changed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from test_engine_model import TRAIN_FILE, train  # noqa: F401  (the module fixture)


def test_softcap_cross_entropy_matches_the_plain_formula_in_value_and_gradient(train):  # noqa: F811
    torch.manual_seed(0)
    cap = 15.0
    logits = (torch.randn(40, 33) * 20).requires_grad_()
    targets = torch.randint(0, 33, (40,))
    targets[::7] = -1  # ignored positions
    loss = train.SoftcapCrossEntropy.apply(logits, targets, cap)
    (grad,) = torch.autograd.grad(loss * 3.0, logits)
    plain = torch.nn.functional.cross_entropy(cap * torch.tanh(logits / cap), targets, ignore_index=-1)
    (plain_grad,) = torch.autograd.grad(plain * 3.0, logits)
    assert loss.item() == pytest.approx(plain.item(), rel=1e-5)
    assert torch.allclose(grad, plain_grad, atol=1e-6)
    assert grad[::7].abs().max() == 0  # ignored targets get no gradient


def test_the_model_trains_on_the_same_loss_it_evaluates(train):  # noqa: F811
    config = train.GPTConfig(sequence_len=32, vocab_size=50, n_layer=2, n_head=2, n_kv_head=2, n_embd=64,
                             window_pattern="SL")
    torch.manual_seed(1)
    model = train.GPT(config, train.Attention("sdpa"))
    model.init_weights()
    idx, targets = torch.randint(0, 50, (3, 32)), torch.randint(0, 50, (3, 32))
    with torch.no_grad():
        mean = model(idx, targets)
        per_token = model(idx, targets, reduction="none")
    assert mean.item() == pytest.approx(per_token.mean().item(), rel=1e-5)


def test_on_a_cpu_the_mlp_stays_on_torch_and_a_bad_setting_is_one_clear_error(train, monkeypatch):  # noqa: F811
    config = train.GPTConfig(sequence_len=32, vocab_size=50, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)
    model = train.GPT(config, train.Attention("sdpa"))
    assert train.enable_fused_mlp(model, "cpu").startswith("torch (the Triton kernels need a CUDA GPU")
    assert not any(m.fused for m in model.modules() if isinstance(m, train.MLP))
    monkeypatch.setenv("AUTORESEARCH_MLP", "triton")
    with pytest.raises(train.ConfigError, match="AUTORESEARCH_MLP=triton: the Triton kernels need a CUDA GPU"):
        train.enable_fused_mlp(model, "cpu")
    monkeypatch.setenv("AUTORESEARCH_MLP", "cuda")
    with pytest.raises(train.ConfigError, match="use torch or triton"):
        train.enable_fused_mlp(model, "cpu")


# Run in a child process: Triton reads TRITON_INTERPRET when the kernels are defined, and the train
# file imports Triton on a CPU only then. bf16 is beyond the interpreter, so the kernels run in float32.
INTERPRETED = textwrap.dedent("""
    import importlib.util, json, sys
    import torch
    import torch.nn.functional as F
    spec = importlib.util.spec_from_file_location("train_interpreted", sys.argv[1])
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    train.relu2_mlp.__defaults__ = (torch.float32,)
    torch.manual_seed(0)
    x = torch.randn(2, 45, 64, requires_grad=True)   # 90 rows: not a whole number of 32-row tiles
    w1 = (torch.randn(160, 64) / 8).requires_grad_()  # 160 hidden: not a whole number of 32-column tiles
    w2 = (torch.randn(64, 160) / 13).requires_grad_()
    grad_y = torch.randn(2, 45, 64)
    fused = train.relu2_mlp(x, w1, w2)
    fused_grads = torch.autograd.grad(fused, (x, w1, w2), grad_y)
    plain = F.relu(x @ w1.t()).square() @ w2.t()
    plain_grads = torch.autograd.grad(plain, (x, w1, w2), grad_y)
    report = {"output": ((fused - plain).abs().max() / plain.abs().max()).item(),
              "grads": [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(fused_grads, plain_grads)]}
    mlp = train.MLP(train.GPTConfig(sequence_len=32, vocab_size=50, n_layer=1, n_head=1, n_kv_head=1, n_embd=64))
    report["check_relu2"] = train.fused_mlp_error(mlp)
    def gelu_forward(self, x):  # an agent's edit: another activation in the formula
        if self.fused:
            return train.relu2_mlp(x, self.c_fc.weight, self.c_proj.weight)
        return self.c_proj(F.gelu(self.c_fc(x)))
    train.MLP.forward = gelu_forward
    report["check_gelu"] = train.fused_mlp_error(mlp)
    print(json.dumps(report))
""")


def test_relu2_kernels_match_the_formula_and_the_check_catches_an_edited_mlp(tmp_path):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", AUTORESEARCH_CACHE=str(tmp_path), CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", INTERPRETED, str(TRAIN_FILE)], capture_output=True, text=True,
                            env=env, cwd=Path(TRAIN_FILE).parents[1], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["output"] < 1e-5
    assert max(report["grads"]) < 1e-5, report  # dx, dW1, dW2: the backward's sqrt(act) form is exact
    assert report["check_relu2"] < 1e-5
    assert report["check_gelu"] > 0.05  # above the start-up check's threshold: the kernels stay off
