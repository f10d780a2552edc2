"""The trusted evaluator (prepare/trusted_eval.py + prepare/model_server.py): the metric is computed
on the fixed side from logits, and models that see the future, remember probes, mix rows or break
the contract are refused with a reason naming the rule."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from test_driver_support import wait_for

REPO = Path(__file__).resolve().parents[1]

# A causal bigram model: logits at t depend on the token at t only. VARIANT switches in one attack.
FAKE_TRAIN_FILE = '''
import torch
VOCAB = {vocab}

class Bigram(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(VOCAB, VOCAB, generator=g))
        self.seen = set()

    def forward(self, idx):
        logits = self.table[idx].clone()
{variant}
        return logits

def load_model(path, device):
    return Bigram().to(device)
'''

VARIANTS = {
    "honest": "",
    # reads the target (the next input token) and puts a huge logit on it
    "peek": "        logits[:, :-1].scatter_(-1, idx[:, 1:, None], 1e4)",
    # cheats only the first time it sees a row, so a probe that comes later looks honest
    "stateful": (
        "        for b in range(idx.size(0)):\n"
        "            key = tuple(idx[b, :8].tolist())\n"
        "            if key not in self.seen:\n"
        "                self.seen.add(key)\n"
        "                logits[b, :-1].scatter_(-1, idx[b, 1:, None], 1e4)"),
    # every row's predictions sharpen with the rest of its batch (a shift of all logits would not
    # change a loss: the probes compare losses, what the metric is made of)
    "mixing": "        logits = logits * (1 + idx.float().mean() * 1e-3)",
    "wrong_shape": "        logits = logits.mean()",
    "noisy": "        logits = logits + torch.randn_like(logits)",
    # prints a forged result line on the server's stdout
    "forged_print": "        print(json.dumps({'metric': 0.0}))" ,
}


def fake_train_file(tmp_path: Path, variant: str, vocab: int) -> Path:
    path = tmp_path / f"train_{variant}.py"
    body = FAKE_TRAIN_FILE.format(vocab=vocab, variant=VARIANTS[variant])
    path.write_text(("import json\n" if variant == "forged_print" else "") + body)
    return path


def trusted_eval(train_file: Path, checkpoint: Path, cache: Path, *extra: str) -> tuple[int, dict]:
    env = {**os.environ, "AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_SMOKE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "prepare.trusted_eval", "--train-file", str(train_file),
                          "--checkpoint", str(checkpoint), "--device", "cpu", *extra],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return out.returncode, json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def vocab(prepared_cache):
    from prepare.tokenizer import Tokenizer
    return Tokenizer.from_directory(prepared_cache / "tokenizer").get_vocab_size() \
        if (prepared_cache / "tokenizer").exists() else 1028


def test_an_honest_model_is_scored_with_a_holdout(prepared_cache, tmp_path, vocab):
    code, result = trusted_eval(fake_train_file(tmp_path, "honest", vocab), tmp_path / "none", prepared_cache)
    assert code == 0, result
    assert 0 < result["metric"] < 20 and 0 < result["holdout"] < 20
    assert result["probes"] > 0 and result["val_units"] > 0 and result["holdout_units"] > 0


@pytest.mark.parametrize("variant, rule", [
    # a stateful model cheats on whichever copy of a row comes first: a cut probe (causality) or the row
    ("peek", "causality rule"), ("stateful", " rule:"), ("mixing", "independence rule"),
    ("noisy", "independence rule"), ("wrong_shape", "shape"),
])
def test_a_forging_model_is_refused_with_the_rule(prepared_cache, tmp_path, vocab, variant, rule):
    code, result = trusted_eval(fake_train_file(tmp_path, variant, vocab), tmp_path / "none", prepared_cache)
    assert code == 1 and "metric" not in result
    assert rule in result["error"], result


def test_what_the_model_prints_cannot_forge_the_result(prepared_cache, tmp_path, vocab):
    _, honest = trusted_eval(fake_train_file(tmp_path, "honest", vocab), tmp_path / "none", prepared_cache)
    code, result = trusted_eval(fake_train_file(tmp_path, "forged_print", vocab), tmp_path / "none", prepared_cache)
    assert code == 0 and result["metric"] == pytest.approx(honest["metric"], abs=1e-9)


def test_a_train_file_without_load_model_is_a_clear_error(prepared_cache, tmp_path):
    bare = tmp_path / "bare.py"
    bare.write_text("x = 1\n")
    code, result = trusted_eval(bare, tmp_path / "none", prepared_cache)
    assert code == 1 and "load_model" in result["error"]


def test_a_train_file_that_fails_on_import_is_that_error_after_load(prepared_cache, tmp_path):
    """The server imports the file before LOAD (while the training runs); its error is kept for
    LOAD and comes back as the evaluation's error, not as a broken pipe."""
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('broken at import')\n")
    code, result = trusted_eval(broken, tmp_path / "none", prepared_cache)
    assert code == 1 and "ValueError: broken at import" in result["error"], result


def test_the_seed_scores_as_the_in_process_metric_did(prepared_cache, tmp_path):
    """engine/train.py trains, saves, and the trusted score of its checkpoint equals the old
    in-process evaluate_bpb of the same weights."""
    checkpoint = tmp_path / "model.pt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(PYTHONPATH=str(REPO), AUTORESEARCH_CACHE=str(prepared_cache), AUTORESEARCH_SMOKE="1",
               AUTORESEARCH_TIME_BUDGET="1", AUTORESEARCH_CHECKPOINT=str(checkpoint),
               AUTORESEARCH_WARMUP_CHECKPOINT=str(tmp_path / "warmup.pt"))
    run = subprocess.run([sys.executable, str(REPO / "engine" / "train.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    early = torch.load(tmp_path / "warmup.pt", weights_only=True)     # the early copy, for the server's compile
    assert early["step"] == 10 and early["config"] == torch.load(checkpoint, weights_only=True)["config"]
    assert "val_bpb" not in run.stdout.split("\n---\n")[-1]          # the harness scores, not the file
    code, result = trusted_eval(REPO / "engine" / "train.py", checkpoint, prepared_cache)
    assert code == 0, result

    script = textwrap.dedent(f'''
        import importlib.util, torch
        from prepare import evaluate_bpb, Tokenizer
        spec = importlib.util.spec_from_file_location("t", {str(REPO / "engine" / "train.py")!r})
        t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)
        m = t.load_model({str(checkpoint)!r}, torch.device("cpu"))
        print(evaluate_bpb(m, Tokenizer.from_directory(), 16))
    ''')
    old = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**env, "AUTORESEARCH_CHECKPOINT": ""},
                         capture_output=True, text=True, timeout=300)
    assert old.returncode == 0, old.stderr[-2000:]
    assert result["metric"] == pytest.approx(float(old.stdout.split()[-1]), abs=1e-5)


class HostBuffer:
    """A stand-in for cuda_share.SharedBuffer in host memory: the GPU path's protocol on the CPU."""

    def __init__(self, nbytes: int):
        self.memory, self.size = torch.zeros(nbytes, dtype=torch.uint8), nbytes

    def tensor(self, dtype, shape, offset: int = 0):
        count = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
        return self.memory[offset:offset + count].view(dtype).view(shape)


def score_through_the_server(train_file: Path, sets, batch_size: int, buffer=None, checkpoint: str = "none",
                             warmup=None, before_load=lambda: None) -> dict:
    """The real server loop (a thread) and the real evaluator over pipes, with a shared buffer or
    without; `before_load` runs while the server waits for LOAD (with `warmup`: warms up)."""
    import random
    import threading

    from prepare import model_server, trusted_eval, wire

    to_server, from_evaluator = os.pipe()
    to_evaluator, from_server = os.pipe()
    requests, replies = os.fdopen(to_server, "rb"), os.fdopen(from_server, "wb")
    server = types.SimpleNamespace(stdin=os.fdopen(from_evaluator, "wb"), stdout=os.fdopen(to_evaluator, "rb"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_server, "receive_buffer", lambda fd: buffer)
        thread = threading.Thread(target=model_server.serve, args=(str(train_file), checkpoint, "cpu", requests, replies,
                                                                   0 if buffer is not None else None, warmup))
        thread.start()
        try:
            before_load()
            wire.write_magic(server.stdin, wire.LOAD)
            wire.read_ready(server.stdout)
            logits = trusted_eval.SharedLogits(server, buffer) if buffer is not None else trusted_eval.PipeLogits(server)
            return trusted_eval.evaluate(logits, sets, batch_size, trusted_eval.TOLERANCE["cpu"], rng=random.Random(0))
        finally:
            server.stdin.close()
            thread.join(timeout=30)
            for stream in (requests, replies, server.stdout):
                stream.close()


def test_the_shared_buffer_path_scores_what_the_pipe_path_scores(tmp_path):
    """The GPU path's alternation (the server writes batch n into half n % 2 of the shared buffer
    while the evaluator scores batch n - 1 from the other half), run on the CPU: every batch read
    from the right half gives the pipe path's metric exactly; a wrong half would fail the probes
    or move the metric."""
    from prepare.trusted_eval import EvalSet

    vocab, T, batch = 64, 16, 4
    rows = np.random.default_rng(0).integers(0, vocab, size=(40, T + 1))
    sets = [EvalSet("val", rows[:32], np.ones((32, T)), 32.0 * T, vocab),
            EvalSet("holdout", rows[32:], np.ones((8, T)), 8.0 * T, vocab)]
    train_file = fake_train_file(tmp_path, "honest", vocab)
    piped = score_through_the_server(train_file, sets, batch)
    shared = score_through_the_server(train_file, sets, batch, HostBuffer(2 * 4 * batch * T * vocab))
    assert shared == piped and piped["probes"] > 0


# load_model reads its table from the checkpoint, so a model built from the early copy scores differently
WARMUP_TRAIN_FILE = '''
import torch
LOADED, SHAPES = [], []

class Table(torch.nn.Module):
    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, idx):
        SHAPES.append((tuple(idx.shape), idx.dtype))
        return self.table[idx].clone()

def load_model(path, device):
    LOADED.append(path)
    return Table(torch.load(path)["model"]).to(device)
'''


@pytest.mark.parametrize("early_copy", ["whole", "garbage"])
def test_the_server_warms_up_on_the_early_copy_and_scores_only_the_final_checkpoint(tmp_path, early_copy):
    """While the training runs, the server builds a model from the training's early copy and runs
    one batch shaped as the evaluation's through it (on a GPU: the compile, done before "go"); what
    it scores is the final checkpoint's model all the same, and a broken copy changes nothing."""
    from prepare import model_server
    from prepare.runtime import save_warmup_checkpoint
    from prepare.trusted_eval import EvalSet

    vocab, T, batch = 64, 16, 4
    rows = np.random.default_rng(1).integers(0, vocab, size=(40, T + 1))
    sets = [EvalSet("val", rows[:32], np.ones((32, T)), 32.0 * T, vocab),
            EvalSet("holdout", rows[32:], np.ones((8, T)), 8.0 * T, vocab)]
    train_file, final, warm = tmp_path / "train.py", tmp_path / "model.pt", tmp_path / "warmup.pt"
    train_file.write_text(WARMUP_TRAIN_FILE)
    torch.save({"model": torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))}, final)
    plain = score_through_the_server(train_file, sets, batch, checkpoint=str(final))

    def training_saves_its_early_copy():
        if early_copy == "whole":
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("AUTORESEARCH_WARMUP_CHECKPOINT", str(warm))
                save_warmup_checkpoint({"model": torch.zeros(vocab, vocab)})
        else:
            warm.write_bytes(b"not a checkpoint")
        child = lambda: sys.modules["train_under_eval"]        # noqa: E731 (this run's, once imported)
        wait_for("the server's warm-up on the early copy", lambda: getattr(child(), "LOADED", None) == [str(warm)]
                 and (early_copy == "garbage" or child().SHAPES), 20)
        assert early_copy == "garbage" or child().SHAPES == [((batch, T), torch.int64)]

    warmed = score_through_the_server(train_file, sets, batch, checkpoint=str(final),
                                      warmup=model_server.Warmup(str(warm), batch, T, vocab),
                                      before_load=training_saves_its_early_copy)
    assert sys.modules["train_under_eval"].LOADED == [str(warm), str(final)]
    assert warmed == plain and plain["probes"] > 0
    assert not (tmp_path / "warmup.pt.partial").exists()
