"""BOS-aligned best-fit packing, off the training loop's critical path.

Semantics are the reference's: documents (each prefixed with BOS) wait in a buffer of at least
`buffer_size`; each row of T+1 tokens takes the largest buffered document that still fits
entirely, and when none fits, the shortest one cropped to fill the row exactly. No padding, every
row starts with BOS, no shuffling (the same rows on every run).

What differs is the cost: the buffer is indexed by length (a sorted list of distinct lengths, a
FIFO per length, so ties go to the oldest document like the reference's linear scan), which makes
a placement O(log n) instead of O(buffer); and tokenizing plus packing run in a background thread
that keeps a queue of finished batches, so the training loop only copies memory.
"""
from __future__ import annotations

import bisect
import queue
import threading
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .cache import split_paths
from .corpus import document_batches


class BestFitPacker:
    """Packs token documents into rows; `epoch` is that of the last document batch read."""

    def __init__(self, documents: Iterator[tuple[list[np.ndarray], int]], buffer_size: int = 1000):
        self._documents = documents
        self._buffer_size = buffer_size
        self._by_length: dict[int, deque[np.ndarray]] = {}
        self._lengths: list[int] = []      # sorted distinct lengths present in the buffer
        self._count = 0
        self.epoch = 1

    def _refill(self) -> None:
        docs, self.epoch = next(self._documents)
        for doc in docs:
            length = len(doc)
            bucket = self._by_length.get(length)
            if bucket is None:
                bucket = self._by_length[length] = deque()
                bisect.insort(self._lengths, length)
            bucket.append(doc)
        self._count += len(docs)

    def _pop(self, index: int) -> np.ndarray:
        length = self._lengths[index]
        bucket = self._by_length[length]
        doc = bucket.popleft()
        if not bucket:
            del self._by_length[length]
            del self._lengths[index]
        self._count -= 1
        return doc

    def fill_row(self, row: np.ndarray) -> None:
        capacity = len(row)
        pos = 0
        while pos < capacity:
            while self._count < self._buffer_size or not self._lengths:
                self._refill()
            remaining = capacity - pos
            fits = bisect.bisect_right(self._lengths, remaining)
            if fits:
                doc = self._pop(fits - 1)
                row[pos:pos + len(doc)] = doc
                pos += len(doc)
            else:
                row[pos:] = self._pop(0)[:remaining]
                pos = capacity


REPLAY_TOKENS = 32 * 1024 * 1024   # a split this small is tokenized once and replayed


def token_documents(tokenizer, split: str, directory: Path | None = None, batch_size: int = 128,
                    num_threads: int = 8) -> Iterator[tuple[list[np.ndarray], int]]:
    """(BOS-prefixed token arrays, epoch) for the split's documents, forever.

    A split that fits in REPLAY_TOKENS is tokenized only once: small corpora (tests, the
    validation shard) would otherwise be re-tokenized many times just to fill the buffer.
    """
    bos = tokenizer.get_bos_token_id()
    replay: list[list[np.ndarray]] | None = []
    replay_tokens = 0
    for texts, epoch in document_batches(split, batch_size, directory):
        if epoch > 1 and replay is not None:
            break
        docs = [np.array(ids, dtype=np.int32) for ids in tokenizer.encode(texts, prepend=bos, num_threads=num_threads)]
        if replay is not None:
            replay_tokens += sum(len(doc) for doc in docs)
            if replay_tokens <= REPLAY_TOKENS:
                replay.append(docs)
            else:
                replay = None   # too big to keep: later epochs are read and tokenized again
        yield docs, epoch
    epoch = 2
    while True:
        for docs in replay:
            yield docs, epoch
        epoch += 1


def pack_rows(tokenizer, n_rows: int, T: int, split: str = "val", directory: Path | None = None,
              buffer_size: int = 1000) -> np.ndarray:
    """The first n_rows packed rows of T+1 tokens (synchronous; used to fix the eval set)."""
    packer = BestFitPacker(token_documents(tokenizer, split, directory), buffer_size)
    rows = np.empty((n_rows, T + 1), dtype=np.int64)
    for row in rows:
        packer.fill_row(row)
    return rows


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class DataLoader:
    """Iterator of (inputs, targets, epoch); inputs/targets are [B, T] int64 on `device`.

    On CUDA the two tensors are views of one persistent device buffer, overwritten by the next
    batch's copy (stream-ordered after the work queued on the previous batch), as in the reference.
    """

    def __init__(self, tokenizer, B: int, T: int, split: str, device=None, buffer_size: int = 1000,
                 prefetch: int = 4, directory: Path | None = None):
        if B <= 0 or T <= 0:
            raise ValueError(f"batch size and sequence length must be positive, got B={B} T={T}")
        split_paths(split, directory)   # fail now, in the caller, when there is no data
        self.device = torch.device(device or _default_device())
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, args=(tokenizer, B, T, split, buffer_size, directory),
            name=f"dataloader-{split}", daemon=True)
        self._thread.start()
        if self.device.type == "cuda":
            # Two pinned staging buffers: one may still be copying while the other is filled.
            self._pinned = [torch.empty((2, B, T), dtype=torch.long).pin_memory() for _ in range(2)]
            self._copied = [None, None]
            self._slot = 0
            self._on_device = torch.empty((2, B, T), dtype=torch.long, device=self.device)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, tokenizer, B, T, split, buffer_size, directory) -> None:
        try:
            packer = BestFitPacker(token_documents(tokenizer, split, directory), buffer_size)
            rows = np.empty((B, T + 1), dtype=np.int64)
            while not self._stop.is_set():
                for row in rows:
                    packer.fill_row(row)
                batch = np.empty((2, B, T), dtype=np.int64)
                batch[0] = rows[:, :-1]
                batch[1] = rows[:, 1:]
                if not self._put((batch, packer.epoch)):
                    return
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(error)

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        batch, epoch = item
        batch = torch.from_numpy(batch)
        if self.device.type != "cuda":
            batch = batch.to(self.device)
            return batch[0], batch[1], epoch
        slot = self._slot
        self._slot ^= 1
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()   # its previous copy to the device has finished
        self._pinned[slot].copy_(batch)
        self._on_device.copy_(self._pinned[slot], non_blocking=True)
        self._copied[slot] = torch.cuda.Event()
        self._copied[slot].record()
        return self._on_device[0], self._on_device[1], epoch

    def close(self) -> None:
        if hasattr(self, "_stop"):   # __init__ may have failed before creating it
            self._stop.set()

    def __del__(self):
        self.close()


def make_dataloader(tokenizer, B: int, T: int, split: str, device=None, buffer_size: int = 1000,
                    prefetch: int = 4) -> DataLoader:
    """Infinite iterator of packed (inputs, targets, epoch) batches of the split; see DataLoader."""
    return DataLoader(tokenizer, B, T, split, device=device, buffer_size=buffer_size, prefetch=prefetch)
