"""Reading documents out of the parquet shards (and writing shards from local text files)."""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .cache import shard_name, split_paths, train_shard_paths, val_shard_path
from .constants import TEXT_COLUMN, TOKENIZER_DOC_CAP, TOKENIZER_MAX_CHARS, VAL_SHARD

ROW_GROUP_DOCS = 1024           # documents per parquet row group of an ingested shard
SHARD_CHARS = 64_000_000        # characters per ingested training shard
VAL_FRACTION = 0.05             # share of ingested documents that go to validation


def check_shard(path: Path) -> int:
    """Rows of a readable shard with a `text` column; ValueError naming the file otherwise."""
    try:
        meta = pq.ParquetFile(path)
        names = meta.schema_arrow.names
        rows = meta.metadata.num_rows
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"{path} is not a readable parquet file ({error}); delete it and run `python -m prepare` again") from None
    if TEXT_COLUMN not in names:
        raise ValueError(f"{path} has no {TEXT_COLUMN!r} column (columns: {names})")
    return rows


def count_documents(paths: Iterable[Path]) -> int:
    """Rows of the shards, from their parquet footers (nothing is read)."""
    return sum(pq.ParquetFile(path).metadata.num_rows for path in paths)


def iter_texts(paths: Iterable[Path]) -> Iterator[list[str]]:
    """One list of documents per parquet row group, in file order."""
    for path in paths:
        try:
            parquet = pq.ParquetFile(path)
            for group in range(parquet.num_row_groups):
                yield parquet.read_row_group(group, columns=[TEXT_COLUMN]).column(TEXT_COLUMN).to_pylist()
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"cannot read {path} ({error}); delete it and run `python -m prepare` again") from None


def document_batches(split: str, batch_size: int = 128, directory: Path | None = None) -> Iterator[tuple[list[str], int]]:
    """(documents, epoch) forever: the split's shards in order, no shuffling, epoch counted from 1."""
    paths = split_paths(split, directory)
    epoch = 1
    while True:
        empty = True
        for texts in iter_texts(paths):
            for start in range(0, len(texts), batch_size):
                empty = False
                yield texts[start:start + batch_size], epoch
        if empty:
            raise ValueError(f"the {split} split has no documents ({', '.join(map(str, paths))})")
        epoch += 1


def tokenizer_texts(directory: Path | None = None, max_chars: int = TOKENIZER_MAX_CHARS,
                    doc_cap: int = TOKENIZER_DOC_CAP) -> Iterator[str]:
    """Training-shard documents cut at doc_cap characters, stopping after max_chars in total."""
    seen = 0
    for texts in iter_texts(train_shard_paths(directory)):
        for text in texts:
            text = text[:doc_cap]
            yield text
            seen += len(text)
            if seen >= max_chars:
                return


# ---------------------------------------------------------------------------------------------
# --from-files: a local corpus in the same layout


def expand_patterns(patterns: Iterable[str]) -> list[Path]:
    """Files matched by glob patterns (recursive `**` allowed; a directory means every file in it)."""
    files: set[Path] = set()
    for pattern in patterns:
        matches = glob.glob(os.path.expanduser(pattern), recursive=True)
        if not matches:
            raise ValueError(f"--from-files pattern {pattern!r} matches nothing")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                files.update(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
            elif path.is_file():
                files.add(path)
    return sorted(files)


def read_documents(paths: Iterable[Path]) -> tuple[list[str], int]:
    """UTF-8 documents, de-duplicated and ordered by content hash (a fixed shuffle that does not
    depend on paths or file order); returns them with the number of files skipped (empty, binary
    or not UTF-8)."""
    by_hash: dict[str, str] = {}
    skipped = 0
    for path in paths:
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            skipped += 1
            continue
        if "\x00" in text or not text.strip():
            skipped += 1
            continue
        by_hash.setdefault(hashlib.sha256(text.encode("utf-8")).hexdigest(), text)
    return [by_hash[h] for h in sorted(by_hash)], skipped


def split_documents(docs: list[str], val_fraction: float = VAL_FRACTION) -> tuple[list[str], list[str]]:
    """(train, val): the first share of the hash-ordered documents validates, at least one each side."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    if len(docs) < 2:
        raise ValueError(f"need at least 2 distinct text documents to build train and validation shards, got {len(docs)}")
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    return docs[n_val:], docs[:n_val]


def _write_shard(path: Path, docs: list[str]) -> None:
    table = pa.table({TEXT_COLUMN: pa.array(docs, type=pa.string())})
    pq.write_table(table, path, row_group_size=ROW_GROUP_DOCS)


def write_shards(train: list[str], val: list[str], directory: Path, shard_chars: int = SHARD_CHARS) -> list[Path]:
    """Replace every shard in `directory` by shards of these documents; atomic per file."""
    directory.mkdir(parents=True, exist_ok=True)
    groups: list[list[str]] = [[]]
    size = 0
    for doc in train:
        if groups[-1] and size + len(doc) > shard_chars:
            groups.append([])
            size = 0
        groups[-1].append(doc)
        size += len(doc)
    staging = Path(tempfile.mkdtemp(prefix=".ingest-", dir=directory))
    try:
        written = [(staging / shard_name(i), docs) for i, docs in enumerate(groups)]
        written.append((staging / shard_name(VAL_SHARD), val))
        for path, docs in written:
            _write_shard(path, docs)
        for old in train_shard_paths(directory) + [val_shard_path(directory)]:
            old.unlink(missing_ok=True)
        final = []
        for path, _ in written:
            os.replace(path, directory / path.name)
            final.append(directory / path.name)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
