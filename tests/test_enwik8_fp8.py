"""FP8 in the enwik8 train file: chosen only with USE_FP8=1 on a GPU that has FP8 and torchao; trained
with torchao's Float8Linear, but scored in bf16 on the same weights, because per-tensor scaling
couples the windows of a batch and the metric's causality guard refuses that. On the CPU torchao
emulates the FP8 matmuls, so the swap is tested here for real."""
import copy
import sys
import types

import pytest
import torch

import prepare.enwik8 as enwik8
from enwik8_support import load_train_module, use_small_evaluation


@pytest.fixture
def train():
    return load_train_module()


def fake_torchao(monkeypatch, installed: bool) -> None:
    """torchao.float8 importable (a stand-in module) or missing, whatever this machine has."""
    for name in ("torchao", "torchao.float8"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name) if installed else None)


@pytest.mark.parametrize("device,use_fp8,capability,torchao,expected,says", [
    ("cuda", "1", (9, 0), True, "fp8", None),               # H100
    ("cuda", "1", (8, 9), True, "fp8", None),               # Ada
    ("cuda", None, (9, 0), True, "bf16", None),             # not asked for
    ("cuda", "0", (9, 0), True, "bf16", None),
    ("cuda", "1", (8, 0), True, "bf16", "compute capability 8.0, needs >= 8.9"),   # A100
    ("cuda", "1", (9, 0), False, "bf16", "FP8 needs torchao"),
    ("cpu", "1", None, True, "fp32", "FP8 is not supported on the CPU"),
])
def test_fp8_is_chosen_only_when_asked_for_and_the_gpu_supports_it(train, monkeypatch, capsys, device, use_fp8,
                                                                   capability, torchao, expected, says):
    monkeypatch.setattr(train, "DEVICE", device)
    if use_fp8 is None:
        monkeypatch.delenv("USE_FP8", raising=False)
    else:
        monkeypatch.setenv("USE_FP8", use_fp8)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    fake_torchao(monkeypatch, torchao)
    assert train.pick_precision() == expected
    out = capsys.readouterr().out
    assert says in out if says else out == ""


@pytest.fixture
def tiny_fp8_run(train, enwik8_cache, monkeypatch):
    """A tiny model of the train file after one FP8 training step (emulated on the CPU), and a plain
    copy of it with the same weights; a small evaluation (64-char windows) on the shared stub data."""
    pytest.importorskip("torchao.float8")
    use_small_evaluation(monkeypatch, enwik8_cache)
    monkeypatch.setattr(train, "DIM", 32)
    monkeypatch.setattr(train, "DEPTH", 1)
    monkeypatch.setattr(train, "SEQ_LEN", 64)
    torch.manual_seed(0)
    model = train.build_model()
    train.use_float8_linears(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(next(enwik8.random_windows("train", 4, 64, "cpu"))).backward()
    optimizer.step()
    reference = copy.deepcopy(model)
    train.use_plain_linears(reference)
    return model, reference.eval()


def float8_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    from torchao.float8.float8_linear import Float8Linear
    return [m for m in model.modules() if isinstance(m, Float8Linear)]


def test_fp8_linears_couple_the_windows_of_a_batch_so_the_guard_refuses_them(tiny_fp8_run):
    model, _ = tiny_fp8_run
    assert len(float8_layers(model.net.attn_layers)) >= 4    # q, k, v, out and the feed-forward
    with pytest.raises(enwik8.CausalityError, match="another row of the batch"):
        enwik8.evaluate_bpc(lambda x: model.eval().net(x), 8, "cpu")


def test_swapping_back_keeps_the_trained_weights_and_gives_the_plain_models_outputs(tiny_fp8_run, train):
    model, reference = tiny_fp8_run
    trained = dict(model.named_parameters())
    train.use_plain_linears(model)
    assert not float8_layers(model)
    swapped = dict(model.named_parameters())
    assert swapped.keys() == trained.keys()
    assert all(swapped[name] is p for name, p in trained.items())     # the same tensors, not copies
    linears = [m for m in model.net.attn_layers.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is torch.nn.Linear for m in linears)
    x = next(enwik8.random_windows("val", 3, 64, "cpu", seed=5))[:, :-1]
    with torch.no_grad():
        assert torch.equal(model.eval().net(x), reference.net(x))     # float32 on the CPU


def test_the_final_evaluation_of_an_fp8_run_is_the_plain_models_val_bpc(tiny_fp8_run, train, monkeypatch):
    model, reference = tiny_fp8_run
    monkeypatch.setattr(train, "PRECISION", "fp8")
    monkeypatch.setattr(train, "EVAL_BATCH_SIZE", 7)
    val_bpc = train.final_val_bpc(model)           # swaps back, then passes the guard
    assert not float8_layers(model)
    with train.autocast():                          # the same bf16 autocast the train file scores under
        expected = enwik8.evaluate_bpc(lambda x: reference.net(x), 7, "cpu")
    assert val_bpc == pytest.approx(expected, rel=1e-6) and 5 < val_bpc < 12
