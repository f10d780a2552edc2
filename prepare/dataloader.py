"""BOS-aligned best-fit packing, in a process of its own.

Semantics are the reference's: documents (each prefixed with BOS) wait in a buffer of at least
`buffer_size`; each row of T+1 tokens takes the largest buffered document that still fits
entirely, and when none fits, the shortest one cropped to fill the row exactly (the rest of it is
thrown away). No padding, every row starts with BOS, no shuffling (the same rows on every run).

What differs is the cost. The buffer is indexed by length (a sorted list of distinct lengths, a
FIFO per length, so ties go to the oldest document like the reference's linear scan), which makes
a placement O(log n) instead of O(buffer). A split whose documents, cut to one row each, fit in
REPLAY_TOKENS is tokenized once and replayed (a small corpus repeats many times in a run). And
tokenizing plus packing run in a forked child process that writes finished rows into shared
memory: the training process keeps its GIL for launching GPU work (a packing thread in the same
process stretched the steps: bench/dataloader.py).
"""
from __future__ import annotations

import bisect
import mmap
import multiprocessing
import signal
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .cache import split_paths
from .corpus import document_batches


class BestFitPacker:
    """Packs documents into rows; `epoch` is that of the last document batch read.

    `documents` yields (token arrays, their full lengths, epoch). An array may be cut short of its
    length, down to the row capacity: the length alone decides where a document goes, a document
    that fits is never longer than a row, and one that does not is only ever cropped to a row.
    """

    def __init__(self, documents: Iterator[tuple[list[np.ndarray], list[int], int]], buffer_size: int = 1000):
        self._documents = documents
        self._buffer_size = buffer_size
        self._by_length: dict[int, deque[np.ndarray]] = {}
        self._lengths: list[int] = []      # sorted distinct lengths present in the buffer
        self._count = 0
        self.epoch = 1

    def _refill(self) -> None:
        docs, lengths, self.epoch = next(self._documents)
        for doc, length in zip(docs, lengths):
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
                length = self._lengths[fits - 1]
                row[pos:pos + length] = self._pop(fits - 1)
                pos += length
            else:
                row[pos:] = self._pop(0)[:remaining]
                pos = capacity


# A split whose documents, cut to one row each, fit in this many tokens (256 MB) is tokenized once
# and replayed. A long document only ever gives a row its first T+1 tokens, so keeping those and
# its length replays the reference's rows exactly, without tokenizing the split again every epoch.
REPLAY_TOKENS = 64 * 1024 * 1024


def token_documents(tokenizer, split: str, directory: Path | None = None, max_tokens: int | None = None,
                    batch_size: int = 128, num_threads: int = 8) -> Iterator[tuple[list[np.ndarray], list[int], int]]:
    """(BOS-prefixed token arrays cut at max_tokens, their full lengths, epoch) for the split's
    documents, forever, in file order."""
    bos = tokenizer.get_bos_token_id()
    replay: list[tuple[list[np.ndarray], list[int]]] | None = []
    replay_tokens = 0
    for texts, epoch in document_batches(split, batch_size, directory):
        if epoch > 1 and replay is not None:
            break
        encoded = tokenizer.encode(texts, prepend=bos, num_threads=num_threads)
        lengths = [len(ids) for ids in encoded]
        docs = [np.array(ids[:max_tokens], dtype=np.int32) for ids in encoded]
        if replay is not None:
            replay_tokens += sum(len(doc) for doc in docs)
            if replay_tokens <= REPLAY_TOKENS:
                replay.append((docs, lengths))
            else:
                replay = None   # too big to keep: later epochs are read and tokenized again
        yield docs, lengths, epoch
    epoch = 2
    while True:
        for docs, lengths in replay:
            yield docs, lengths, epoch
        epoch += 1


def pack_rows(tokenizer, n_rows: int, T: int, split: str = "val", directory: Path | None = None,
              buffer_size: int = 1000) -> np.ndarray:
    """The first n_rows packed rows of T+1 tokens (synchronous; used to fix the eval set)."""
    packer = BestFitPacker(token_documents(tokenizer, split, directory, max_tokens=T + 1), buffer_size)
    rows = np.empty((n_rows, T + 1), dtype=np.int64)
    for row in rows:
        packer.fill_row(row)
    return rows


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _pack_into_slots(tokenizer, split, directory, buffer_size, slots, free, ready, parent_ends) -> None:
    """The child process: pack rows into whichever slot the parent frees, report (slot, epoch)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle; we exit on EOF
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # close() terminates us, whatever the parent set
    for end in parent_ends:
        end.close()
    try:
        row_tokens = slots.shape[-1]
        packer = BestFitPacker(token_documents(tokenizer, split, directory, max_tokens=row_tokens), buffer_size)
        while True:
            slot = free.recv()                     # EOFError once the parent has closed or died
            for row in slots[slot]:
                packer.fill_row(row)
            ready.send((slot, packer.epoch))
    except (EOFError, BrokenPipeError):
        return
    except BaseException as error:                 # handed to the parent, which raises it
        try:
            ready.send(("error", error))
        except Exception:                          # unpicklable: keep its message
            ready.send(("error", RuntimeError(f"{type(error).__name__}: {error}")))


class DataLoader:
    """Iterator of (inputs, targets, epoch); inputs/targets are [B, T] int64 on `device`.

    A child process packs up to `prefetch` batches ahead into shared-memory slots (int32 rows of
    T+1 tokens); the slot indices go back and forth over two pipes. On CUDA the two tensors are
    views of one persistent device buffer, overwritten by the next batch's copy (stream-ordered
    after the work queued on the previous batch), as in the reference.
    """

    def __init__(self, tokenizer, B: int, T: int, split: str, device=None, buffer_size: int = 1000,
                 prefetch: int = 4, directory: Path | None = None):
        if B <= 0 or T <= 0 or prefetch <= 0:
            raise ValueError(f"batch size, sequence length and prefetch must be positive, got B={B} T={T} prefetch={prefetch}")
        split_paths(split, directory)   # fail now, in the caller, when there is no data
        self.device = torch.device(device or _default_device())
        self._split = split
        # Anonymous shared memory, inherited by the forked child: no names, freed with the last user.
        self._shared = mmap.mmap(-1, prefetch * B * (T + 1) * 4)
        self._slots = np.frombuffer(self._shared, dtype=np.int32).reshape(prefetch, B, T + 1)
        # Fork: the child needs no imports and never re-runs the train file (spawn would re-import
        # __main__). It is forked before this process pins memory or starts threads of its own.
        context = multiprocessing.get_context("fork")
        self._ready, ready_child = context.Pipe(duplex=False)
        free_child, self._free = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_pack_into_slots, name=f"dataloader-{split}", daemon=True,
            args=(tokenizer, split, directory, buffer_size, self._slots, free_child, ready_child,
                  (self._ready, self._free)))
        self._process.start()
        ready_child.close()
        free_child.close()
        self._closed = False
        for slot in range(prefetch):
            self._free.send(slot)
        if self.device.type == "cuda":
            # Two pinned staging buffers: one may still be copying while the other is filled.
            self._pinned = [torch.empty((2, B, T), dtype=torch.long).pin_memory() for _ in range(2)]
            self._copied = [None, None]
            self._staging = 0
            self._on_device = torch.empty((2, B, T), dtype=torch.long, device=self.device)

    def __iter__(self):
        return self

    def _next_rows(self):
        """(rows of the next batch in shared memory, its slot, epoch); raises the child's error."""
        try:
            slot, epoch = self._ready.recv()
        except EOFError:
            code = self._process.exitcode
            self.close()
            raise RuntimeError(f"the {self._split} dataloader process ended unexpectedly (exit code {code})") from None
        if slot == "error":
            self.close()
            raise epoch
        return torch.from_numpy(self._slots[slot]), slot, epoch

    def __next__(self):
        if self._closed:
            raise StopIteration
        rows, slot, epoch = self._next_rows()
        if self.device.type == "cuda":
            staging = self._staging
            self._staging ^= 1
            if self._copied[staging] is not None:
                self._copied[staging].synchronize()   # its previous copy to the device has finished
            batch = self._pinned[staging]
        else:
            batch = torch.empty((2, rows.size(0), rows.size(1) - 1), dtype=torch.long)
        batch[0].copy_(rows[:, :-1])   # int32 -> int64; torch copies without holding the GIL
        batch[1].copy_(rows[:, 1:])
        try:
            self._free.send(slot)      # the rows are copied out: the child may refill the slot
        except BrokenPipeError:        # the child is gone: this batch is whole, the next call says so
            pass
        if self.device.type == "cuda":
            self._on_device.copy_(batch, non_blocking=True)
            self._copied[staging] = torch.cuda.Event()
            self._copied[staging].record()
            batch = self._on_device
        elif self.device.type != "cpu":
            batch = batch.to(self.device)
        return batch[0], batch[1], epoch

    def close(self) -> None:
        """Stop the child process (idempotent; also at garbage collection and interpreter exit)."""
        if getattr(self, "_closed", True):   # __init__ may have failed before the child started
            return
        self._closed = True
        for end in (self._free, self._ready):
            end.close()
        # Other loaders' children may hold copies of our pipe ends (fork), so EOF alone may not
        # reach ours: stop it outright. It owns nothing that needs cleaning up.
        self._process.terminate()
        self._process.join(timeout=5)

    def __del__(self):
        try:
            self.close()
        except Exception:   # interpreter shutdown: multiprocessing may already be torn down
            pass


def make_dataloader(tokenizer, B: int, T: int, split: str, device=None, buffer_size: int = 1000,
                    prefetch: int = 4) -> DataLoader:
    """Infinite iterator of packed (inputs, targets, epoch) batches of the split; see DataLoader."""
    return DataLoader(tokenizer, B, T, split, device=device, buffer_size=buffer_size, prefetch=prefetch)
