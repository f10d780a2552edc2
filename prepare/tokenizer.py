"""The BPE tokenizer: trained with rustbpe, run with tiktoken, stored as plain JSON.

The file holds the merges (base64 bytes, index = rank), the split pattern and the specials, so
loading it never unpickles anything. Per-token byte lengths come from the raw merge bytes, not
from decode(): a token that is not valid UTF-8 on its own (a lone continuation byte) would decode
to U+FFFD and count 3 bytes (the reference's issue #384).
"""
from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import tiktoken

from .cache import tokenizer_dir
from .constants import BOS_TOKEN, SPECIAL_TOKENS, SPLIT_PATTERN, VOCAB_SIZE

TOKENIZER_FILE = "tokenizer.json"
FORMAT = "autoresearch-bpe/1"
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


class Tokenizer:
    """tiktoken.Encoding plus the BOS convention of the dataloader."""

    def __init__(self, mergeable_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN):
        self.mergeable_ranks = mergeable_ranks
        self.pattern = pattern
        n = len(mergeable_ranks)
        specials = {name: n + i for i, name in enumerate(SPECIAL_TOKENS)}
        self.enc = tiktoken.Encoding(name="rustbpe", pat_str=pattern, mergeable_ranks=mergeable_ranks,
                                     special_tokens=specials)
        self.bos_token_id = self.enc.encode_single_token(BOS_TOKEN)

    @classmethod
    def from_directory(cls, directory: str | Path | None = None) -> "Tokenizer":
        path = Path(directory or tokenizer_dir()) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer at {path}; run `python -m prepare` first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            ranks = {base64.b64decode(token): rank for rank, token in enumerate(data["mergeable_ranks"])}
            if list(data["special_tokens"]) != list(SPECIAL_TOKENS):
                raise ValueError("unexpected special tokens")
            return cls(ranks, data["pattern"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a valid tokenizer file ({error}); delete it and run `python -m prepare`") from None

    def save(self, directory: str | Path | None = None) -> Path:
        """Write tokenizer.json atomically (temp file + rename)."""
        directory = Path(directory or tokenizer_dir())
        directory.mkdir(parents=True, exist_ok=True)
        by_rank = sorted(self.mergeable_ranks.items(), key=lambda item: item[1])
        assert [rank for _, rank in by_rank] == list(range(len(by_rank))), "ranks must be dense"
        data = {
            "format": FORMAT,
            "pattern": self.pattern,
            "mergeable_ranks": [base64.b64encode(token).decode("ascii") for token, _ in by_rank],
            "special_tokens": {name: len(by_rank) + i for i, name in enumerate(SPECIAL_TOKENS)},
        }
        fd, tmp = tempfile.mkstemp(prefix=".tokenizer-", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.chmod(tmp, 0o644)   # mkstemp creates 0600; the tokenizer is not a secret
        os.replace(tmp, directory / TOKENIZER_FILE)
        return directory / TOKENIZER_FILE

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode(self, text: str | list[str], prepend: int | str | None = None, num_threads: int = 8):
        """Token ids of one text, or a list of id lists for a list of texts; `prepend` (an id or a
        special token's name) goes in front of each document."""
        if isinstance(prepend, str):
            prepend = self.enc.encode_single_token(prepend)
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return ids if prepend is None else [prepend] + ids
        if not isinstance(text, list):
            raise TypeError(f"encode takes a str or a list of str, got {type(text).__name__}")
        batch = self.enc.encode_ordinary_batch(text, num_threads=num_threads)
        if prepend is not None:
            for ids in batch:
                ids.insert(0, prepend)
        return batch

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids))

    def token_byte_lengths(self) -> list[int]:
        """Byte length of every id, taken from the raw merge bytes; specials count 0."""
        lengths = [0] * self.get_vocab_size()
        for token, rank in self.mergeable_ranks.items():
            lengths[rank] = len(token)
        return lengths


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train BPE on `texts` with vocab_size ids in all (the last 4 are the specials)."""
    import rustbpe

    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab size must be at least {MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} specials), got {vocab_size}")
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(texts), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in bpe.get_mergeable_ranks()}
    tokenizer = Tokenizer(ranks, bpe.get_pattern())
    sample = "Hello world! Numbers: 123. Unicode: 你好"
    if tokenizer.decode(tokenizer.encode(sample)) != sample:
        raise RuntimeError("trained tokenizer does not round-trip a sample text")
    return tokenizer


def get_token_bytes(device="cpu", directory: str | Path | None = None):
    """int32 tensor [vocab]: bytes of each token id (0 for specials), on `device`."""
    import torch

    lengths = Tokenizer.from_directory(directory).token_byte_lengths()
    return torch.tensor(lengths, dtype=torch.int32, device=device)
