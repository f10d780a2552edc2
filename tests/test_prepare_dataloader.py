"""Best-fit packing: same rows as the reference's scan, no padding, BOS first, deterministic;
packed in a child process that closes cleanly and whose failures surface in the caller."""
from __future__ import annotations

import importlib.util
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import prepare.dataloader as dataloader
from prepare import Tokenizer, make_dataloader
from prepare.dataloader import BestFitPacker, token_documents

BENCH = Path(__file__).resolve().parent.parent / "bench" / "dataloader.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_dataloader", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer(prepared_cache):
    return Tokenizer.from_directory()


def docs_source(lengths_per_batch, cut_at=None):
    """Documents [id, id+1, ...] of the given lengths (their arrays cut at `cut_at`), batch by
    batch, epoch = batch number."""
    def gen():
        next_id = 0
        for epoch, lengths in enumerate(lengths_per_batch, start=1):
            docs = []
            for n in lengths:
                docs.append(np.arange(next_id, next_id + n, dtype=np.int32)[:cut_at])
                next_id += n
            yield docs, list(lengths), epoch
    return gen()


def test_packer_takes_the_largest_fit_oldest_first_and_crops_the_shortest():
    packer = BestFitPacker(docs_source([[3, 5, 5, 9, 2], [4, 4, 4, 4, 4]]), buffer_size=5)
    row = np.full(8, -1, dtype=np.int64)
    packer.fill_row(row)
    # capacity 8: largest fitting is the first 5 (ids 3..7), then the 3 (ids 0..2) fills it.
    assert row.tolist() == [3, 4, 5, 6, 7, 0, 1, 2]
    packer.fill_row(row)
    # Buffer 5 (ids 8..12), 9, 2 (ids 22, 23), refilled with five 4s: the 5, then the 2, then with
    # 1 slot left nothing fits, so the shortest (the oldest 4, ids 24..27) is cropped to 1 token.
    assert row.tolist() == [8, 9, 10, 11, 12, 22, 23, 24]
    assert packer.epoch == 2


def test_documents_cut_to_a_row_pack_exactly_like_whole_ones():
    """Only a document's length decides where it goes, and no row takes more than its capacity
    from one document: arrays cut at the capacity (what the replay keeps) give the same rows."""
    rng = np.random.default_rng(0)
    batches = [list(rng.integers(1, 40, size=16)) for _ in range(30)]   # many longer than a row
    whole = BestFitPacker(docs_source(batches), buffer_size=20)
    cut = BestFitPacker(docs_source(batches, cut_at=12), buffer_size=20)
    a, b = np.empty(12, dtype=np.int64), np.empty(12, dtype=np.int64)
    for _ in range(25):
        whole.fill_row(a)
        cut.fill_row(b)
        assert a.tolist() == b.tolist()


class CountingTokenizer:
    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    def get_bos_token_id(self):
        return self.tokenizer.get_bos_token_id()

    def encode(self, texts, **kwargs):
        self.calls += 1
        return self.tokenizer.encode(texts, **kwargs)


def calls_per_epoch(tokenizer, epochs):
    counting = CountingTokenizer(tokenizer)
    calls = {}
    for _, _, epoch in token_documents(counting, "val", max_tokens=257):
        if epoch > epochs:
            return calls
        calls[epoch] = counting.calls


def test_a_small_split_is_tokenized_once_and_replayed(tokenizer, monkeypatch):
    calls = calls_per_epoch(tokenizer, 3)
    assert calls[1] > 0 and calls[3] == calls[1]            # epochs 2 and 3 come from the replay
    monkeypatch.setattr(dataloader, "REPLAY_TOKENS", 1000)  # too big to keep: tokenized every epoch
    calls = calls_per_epoch(tokenizer, 3)
    assert calls[3] == 3 * calls[1]


def test_rows_equal_the_reference_packer_batch_for_batch(tokenizer):
    reference = load_bench().reference_loader(tokenizer, 4, 64, "train", buffer_size=50)
    ours = make_dataloader(tokenizer, 4, 64, "train", device="cpu", buffer_size=50)
    for _ in range(40):
        ref_x, ref_y, ref_epoch = next(reference)
        x, y, epoch = next(ours)
        assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
        assert epoch == ref_epoch
    ours.close()


def test_rows_equal_the_reference_across_many_epochs_of_a_replayed_split(tokenizer):
    """The validation split is small enough to be tokenized once and replayed: replaying must give
    the rows the reference gets by reading and tokenizing the split again every epoch."""
    reference = load_bench().reference_loader(tokenizer, 8, 256, "val", buffer_size=100)
    ours = make_dataloader(tokenizer, 8, 256, "val", device="cpu", buffer_size=100)
    epochs = set()
    for _ in range(150):
        ref_x, _, ref_epoch = next(reference)
        x, _, epoch = next(ours)
        assert torch.equal(x, ref_x) and epoch == ref_epoch
        epochs.add(epoch)
    assert len(epochs) >= 4, f"the split was not replayed enough to test it: epochs {sorted(epochs)}"
    ours.close()


def test_packing_runs_in_a_child_process_that_close_stops(tokenizer):
    before = set(multiprocessing.active_children())
    loader = make_dataloader(tokenizer, 2, 32, "train", device="cpu")
    next(loader)
    children = set(multiprocessing.active_children()) - before
    assert len(children) == 1 and next(iter(children)).pid != os.getpid()
    loader.close()
    assert not (set(multiprocessing.active_children()) - before)
    with pytest.raises(StopIteration):
        next(loader)


def test_a_dead_packing_process_is_a_clear_error_not_a_hang(tokenizer):
    before = set(multiprocessing.active_children())
    loader = make_dataloader(tokenizer, 2, 32, "train", device="cpu", prefetch=2)
    (child,) = set(multiprocessing.active_children()) - before
    next(loader)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=10)
    with pytest.raises(RuntimeError, match="dataloader process ended unexpectedly"):
        for _ in range(3):   # the batches already packed may still come out first
            next(loader)


def test_batches_have_no_padding_start_with_bos_and_shift_targets(tokenizer):
    B, T = 8, 128
    loader = make_dataloader(tokenizer, B, T, "train", device="cpu")
    bos = tokenizer.get_bos_token_id()
    epochs = []
    for _ in range(60):
        x, y, epoch = next(loader)
        assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.long
        assert (x[:, 0] == bos).all()
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert ((x >= 0) & (x < tokenizer.get_vocab_size())).all()   # every slot holds a real token
        epochs.append(epoch)
    assert epochs == sorted(epochs)
    loader.close()


def test_loader_is_deterministic_across_instances(tokenizer):
    first = make_dataloader(tokenizer, 2, 32, "val", device="cpu")
    second = make_dataloader(tokenizer, 2, 32, "val", device="cpu")
    for _ in range(10):
        a, b = next(first), next(second)
        assert torch.equal(a[0], b[0]) and a[2] == b[2]
    first.close()
    second.close()


def test_missing_data_fails_at_construction_with_a_hint(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m prepare"):
        make_dataloader(tokenizer, 2, 32, "train", device="cpu")
    with pytest.raises(ValueError, match="split"):
        make_dataloader(tokenizer, 2, 32, "test", device="cpu")
    with pytest.raises(ValueError, match="prefetch"):
        make_dataloader(tokenizer, 2, 32, "train", device="cpu", prefetch=0)


def test_a_corrupt_shard_surfaces_as_a_clear_error(tokenizer, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shard_00000.parquet").write_bytes(b"not parquet at all")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))
    loader = make_dataloader(tokenizer, 2, 32, "train", device="cpu")
    with pytest.raises(ValueError, match="shard_00000.parquet"):
        next(loader)
