"""Where prepared data lives. Read from the environment on every call, so a test (or a driver)
can point AUTORESEARCH_CACHE somewhere else after `prepare` was imported.

    <cache>/data/shard_00000.parquet ...   training shards (column `text`)
    <cache>/data/shard_06542.parquet       the pinned validation shard
    <cache>/tokenizer/tokenizer.json       merges, pattern and specials (plain JSON, no pickle)
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .constants import VAL_SHARD

_SHARD_RE = re.compile(r"shard_(\d{5})\.parquet")


def cache_dir() -> Path:
    root = os.environ.get("AUTORESEARCH_CACHE") or "~/.cache/autoresearch"
    return Path(root).expanduser()


def data_dir() -> Path:
    return cache_dir() / "data"


def tokenizer_dir() -> Path:
    return cache_dir() / "tokenizer"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def val_shard_path(directory: Path | None = None) -> Path:
    return (directory or data_dir()) / shard_name(VAL_SHARD)


def train_shard_paths(directory: Path | None = None) -> list[Path]:
    """Training shards in index order (the validation shard excluded)."""
    directory = directory or data_dir()
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _SHARD_RE.fullmatch(path.name)
        if match and int(match.group(1)) != VAL_SHARD:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def split_paths(split: str, directory: Path | None = None) -> list[Path]:
    """The parquet files of a split, or a FileNotFoundError that says what to run."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    directory = directory or data_dir()
    paths = train_shard_paths(directory) if split == "train" else [val_shard_path(directory)]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        what = "training shards" if split == "train" else f"validation shard {val_shard_path(directory).name}"
        raise FileNotFoundError(f"no {what} in {directory}; run `python -m prepare` first")
    return paths
