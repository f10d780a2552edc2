"""The enwik8 task's fixed side: data (download, 90/5/5 split) and the fixed val_bpc metric.

`engine/train_enwik8.py` imports the constants, `load_split`, `random_windows` and `evaluate_bpc`
from here; agents never edit this file. `python -m prepare --task enwik8` calls `prepare_enwik8`.

Cache layout ($AUTORESEARCH_CACHE/enwik8/):
    train.bin, val.bin, test.bin    raw uint8 bytes: the first 90 %, the next 5 %, the last 5 %
                                    (exactly 90 M / 5 M / 5 M for the real 100,000,000-byte enwik8)
    meta.json                       where the bytes came from, their sha256, the split sizes

The metric (`evaluate_bpc`) is the same whatever the train file does with its batch size or its
own training context: it scores the first EVAL_CHARS characters of val.bin (each exactly once)
with windows of EVAL_SEQ_LEN characters that slide by EVAL_STRIDE, so every scored character
except those of the very first window sees at least EVAL_SEQ_LEN - EVAL_STRIDE characters of
context. A causality guard runs first and refuses a model whose past predictions move when
future characters change.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import math
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import requests
import torch
import torch.nn.functional as F
from tqdm import tqdm

# ---------------------------------------------------------------------------------------------
# Constants (fixed for every run of a population)

SMOKE = os.environ.get("AUTORESEARCH_SMOKE") == "1"


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"error: {name}={raw!r} is not a number") from None


VOCAB_SIZE = 256                                   # bytes
MAX_SEQ_LEN = 128 if SMOKE else 1024               # default training context of the train file
EVAL_SEQ_LEN = 128 if SMOKE else 1024              # context of the metric, whatever the train file uses
EVAL_STRIDE = EVAL_SEQ_LEN // 2                    # windows overlap by half: >= 512 chars of context
EVAL_CHARS = int(_env_number("AUTORESEARCH_EVAL_TOKENS", 16_384 if SMOKE else 5_000_000))
TIME_BUDGET = _env_number("AUTORESEARCH_TIME_BUDGET", 300)   # training seconds

ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8_BYTES = 100_000_000
ENWIK8_MD5 = "a1fa5ffddb56f4953e226637dabbb36a"          # published on mattmahoney.net
ENWIK8_SHA256 = "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8"
MIN_BYTES = 1_000_000                              # below this the 5 % val split is too thin to judge
SPLITS = ("train", "val", "test")
DOWNLOAD_ATTEMPTS = 5
DOWNLOAD_BACKOFF_S = 2.0                           # waits 2, 4, 8, 16 s between attempts
CAUSALITY_TOLERANCE = 1e-3                         # nats; an honest model moves by exactly 0


class PrepareError(Exception):
    """Bad input or a failed download: one line for the user."""


class CausalityError(ValueError):
    """The model's predictions for earlier characters depend on later ones."""


def data_dir() -> Path:
    root = os.environ.get("AUTORESEARCH_CACHE") or os.path.join("~", ".cache", "autoresearch")
    return Path(root).expanduser() / "enwik8"


def enwik8_url() -> str:
    return os.environ.get("AUTORESEARCH_ENWIK8_URL") or ENWIK8_URL


# ---------------------------------------------------------------------------------------------
# Reading the source: a zip (enwik8.zip), a gzip (enwik8.gz) or raw bytes

def read_source(path: Path) -> bytes:
    """The bytes inside an archive, or the file itself when it is not one."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                named = [m for m in members if os.path.basename(m.filename) == "enwik8"]
                if named:
                    return archive.read(named[0])
                if len(members) == 1:
                    return archive.read(members[0])
                raise PrepareError(f"{path}: zip holds {len(members)} files and none is named enwik8")
        except (zipfile.BadZipFile, OSError) as e:
            raise PrepareError(f"{path}: broken zip archive ({e})") from None
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        try:
            with gzip.open(path) as f:
                return f.read()
        except (OSError, EOFError) as e:
            raise PrepareError(f"{path}: broken gzip file ({e})") from None
    return path.read_bytes()


def expand_files(patterns: list[str]) -> list[Path]:
    """Paths, globs (`**` recurses) and directories (every file below), in the order given, each
    pattern's matches sorted; a pattern matching nothing is an error."""
    paths = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            matches = sorted(str(p) for p in Path(pattern).rglob("*"))
        else:
            matches = sorted(glob.glob(pattern, recursive=True))
        files = [Path(m) for m in matches if os.path.isfile(m)]
        if not files:
            raise PrepareError(f"--from-files: no file matches {pattern!r}")
        paths.extend(files)
    return paths


# ---------------------------------------------------------------------------------------------
# Download: requests, streamed to a temp file, renamed when complete, retried with back-off

def _retryable(error: Exception) -> bool:
    response = getattr(error, "response", None)
    if response is None:
        return True                                # connection reset, timeout, truncation
    return response.status_code >= 500 or response.status_code in (408, 429)


def download(url: str, dest: Path, attempts: int = DOWNLOAD_ATTEMPTS) -> None:
    tmp = dest.with_name(dest.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            with requests.get(url, stream=True, timeout=30) as response:
                response.raise_for_status()
                expected = int(response.headers.get("content-length") or 0)
                with open(tmp, "wb") as f, tqdm(total=expected or None, unit="B", unit_scale=True,
                                                desc=f"download {os.path.basename(url)}") as bar:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
            received = tmp.stat().st_size
            if expected and received != expected:
                raise requests.ConnectionError(f"truncated: got {received:,} of {expected:,} bytes")
            os.replace(tmp, dest)
            return
        except requests.RequestException as e:
            tmp.unlink(missing_ok=True)
            if attempt >= attempts or not _retryable(e):
                raise PrepareError(f"download of {url} failed after {attempt} attempt(s): {e}") from None
            wait = DOWNLOAD_BACKOFF_S * 2 ** (attempt - 1)
            print(f"download attempt {attempt}/{attempts} failed ({e}); retrying in {wait:.0f} s")
            time.sleep(wait)


# ---------------------------------------------------------------------------------------------
# Checking and splitting

def split_sizes(n: int) -> dict[str, int]:
    """90 / 5 / 5 percent: exactly 90 M / 5 M / 5 M bytes for the real enwik8."""
    train, val = n * 90 // 100, n * 5 // 100
    return {"train": train, "val": val, "test": n - train - val}


def check_source(data: bytes, must_be_enwik8: bool) -> dict:
    """Digest and size checks. The real archive must be byte-exact; anything else gets a note."""
    if len(data) < MIN_BYTES:
        raise PrepareError(f"source holds only {len(data):,} bytes; at least {MIN_BYTES:,} are needed")
    md5, sha256 = hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()
    genuine = len(data) == ENWIK8_BYTES and md5 == ENWIK8_MD5 and sha256 == ENWIK8_SHA256
    if must_be_enwik8 and not genuine:
        raise PrepareError(f"{enwik8_url()} did not give the published enwik8 "
                           f"({len(data):,} bytes, sha256 {sha256[:16]}...): refusing to use it")
    if not genuine:
        print(f"note: the source is not the published enwik8 ({len(data):,} bytes, sha256 "
              f"{sha256[:16]}...); it is split 90/5/5 percent like enwik8's 90 M / 5 M / 5 M")
    return {"bytes": len(data), "sha256": sha256, "genuine_enwik8": genuine}


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_splits(data: bytes, info: dict, source: dict, out: Path) -> dict:
    sizes = split_sizes(len(data))
    offset = 0
    for name in SPLITS:
        write_atomic(out / f"{name}.bin", data[offset:offset + sizes[name]])
        offset += sizes[name]
    meta = {"source": source, **info, "splits": sizes}
    write_atomic(out / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())  # last: marks done
    return meta


def already_prepared(out: Path, source: dict) -> bool:
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("source") == source and all(
        (out / f"{name}.bin").is_file() and (out / f"{name}.bin").stat().st_size == size
        for name, size in meta.get("splits", {}).items())


def prepare(from_files: list[str] | None = None, force: bool = False,
            attempts: int = DOWNLOAD_ATTEMPTS) -> dict:
    """Fetch (or read) the source, check it and write the three splits. Returns meta.json's content."""
    out = data_dir()
    out.mkdir(parents=True, exist_ok=True)
    if from_files:
        paths = expand_files(from_files)
        source = {"files": [str(p.resolve()) for p in paths], "bytes": [p.stat().st_size for p in paths]}
    else:
        source = {"url": enwik8_url()}
    if not force and already_prepared(out, source):
        print(f"enwik8 already prepared in {out}")
        return json.loads((out / "meta.json").read_text())

    if from_files:
        if len(paths) > 1:
            print(f"note: concatenating {len(paths)} files in the order given")
        data = b"".join(read_source(p) for p in paths)
        info = check_source(data, must_be_enwik8=False)
    else:
        archive = out / "download"
        download(source["url"], archive, attempts)
        try:
            data = read_source(archive)
        finally:
            archive.unlink(missing_ok=True)
        info = check_source(data, must_be_enwik8=source["url"] == ENWIK8_URL)
    meta = write_splits(data, info, source, out)
    sizes = meta["splits"]
    print(f"enwik8 ready in {out}: train {sizes['train']:,} / val {sizes['val']:,} / "
          f"test {sizes['test']:,} bytes")
    return meta


def prepare_enwik8(args) -> None:
    """Entry point of `python -m prepare --task enwik8` (args: from_files; optional force, retries)."""
    try:
        prepare(getattr(args, "from_files", None), getattr(args, "force", False),
                getattr(args, "retries", None) or DOWNLOAD_ATTEMPTS)
    except PrepareError as e:
        raise SystemExit(f"prepare: error: {e}") from None


# ---------------------------------------------------------------------------------------------
# Runtime: splits and the training sampler

def load_split(name: str) -> np.ndarray:
    """A split as a read-only uint8 memmap."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
    path = data_dir() / f"{name}.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python -m prepare --task enwik8` first")
    return np.memmap(path, dtype=np.uint8, mode="r")


def random_windows(split: str, batch_size: int, seq_len: int, device, seed: int = 0):
    """Endless (batch_size, seq_len + 1) int64 batches of windows at uniformly random starts.

    The split lives on the device, so a batch is one gather there (no host work per step)."""
    data = torch.from_numpy(np.array(load_split(split))).to(device)
    if len(data) <= seq_len + 1:
        raise ValueError(f"split {split!r} ({len(data):,} bytes) is shorter than a window of {seq_len + 1}")
    offsets = torch.arange(seq_len + 1, device=device)
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size, 1), generator=generator)
        yield data[starts.to(device) + offsets].long()


# ---------------------------------------------------------------------------------------------
# The fixed metric

def eval_plan(n_val: int, n_chars: int, seq_len: int, stride: int) -> tuple[list[tuple[int, int]], int]:
    """Windows that score targets val[1 .. n] exactly once each, n = min(n_chars, n_val - 1).

    Returns ([(start, first_scored), ...], n): the window's input is val[start : start + seq_len],
    its targets val[start + 1 : start + seq_len + 1], and offsets >= first_scored are scored.
    The first window scores all of its targets (with 1 .. seq_len characters of context); every
    later one scores only targets with at least seq_len - stride characters before them."""
    n = min(n_chars, n_val - 1)
    if n < seq_len:
        raise ValueError(f"too few characters to score: {n:,} (val split {n_val:,} bytes, EVAL_CHARS "
                         f"{n_chars:,}); the evaluation needs at least one window of {seq_len}")
    plan, scored_until, start = [], 0, 0
    while scored_until < n:
        start = min(start, n - seq_len)            # the last window ends exactly at target n
        plan.append((start, scored_until - start))
        scored_until = start + seq_len
        start += stride
    return plan, n


def _target_log_probs(model_fn, x: torch.Tensor) -> torch.Tensor:
    logits = model_fn(x)
    if tuple(logits.shape) != (*x.shape, VOCAB_SIZE):
        raise ValueError(f"model_fn must return logits of shape {(*x.shape, VOCAB_SIZE)}, "
                         f"got {tuple(logits.shape)}")
    return F.log_softmax(logits.float(), dim=-1)


def check_causality(model_fn, val: torch.Tensor, device, seq_len: int) -> None:
    """Refuse a model whose predictions before position p move when characters from p on change,
    or when another sequence of the same batch changes (windows overlap, so a batch mix leaks too).
    The model must be deterministic (eval mode, no dropout)."""
    generator = torch.Generator().manual_seed(1234)
    x = val[:2 * seq_len].reshape(2, seq_len).long().to(device)
    cut = seq_len // 2
    shift = torch.randint(1, VOCAB_SIZE, x.shape, generator=generator).to(device)
    shift[0, :cut] = 0                            # row 0 keeps its past, row 1 changes entirely
    changed = (x + shift) % VOCAB_SIZE
    before = _target_log_probs(model_fn, x)[0, :cut]
    after = _target_log_probs(model_fn, changed)[0, :cut]
    moved = (before - after).abs().max().item()
    if not moved <= CAUSALITY_TOLERANCE:
        raise CausalityError(f"causality guard: predictions for characters before position {cut} moved "
                             f"by {moved:.3g} nats when later characters (or another row of the batch) "
                             "changed; the model must be causal and deterministic (model.eval())")


@torch.no_grad()
def evaluate_bpc(model_fn, batch_size: int, device, check_causal: bool = True) -> float:
    """Bits per character on the first EVAL_CHARS characters of val.bin, at a fixed context.

    model_fn(x) maps int64 (B, EVAL_SEQ_LEN) to logits (B, EVAL_SEQ_LEN, 256); batch_size only
    changes how many windows go through at once, never which characters are scored or how."""
    val = torch.from_numpy(np.array(load_split("val"))).to(device)
    if check_causal:
        check_causality(model_fn, val, device, EVAL_SEQ_LEN)
    plan, n_chars = eval_plan(len(val), EVAL_CHARS, EVAL_SEQ_LEN, EVAL_STRIDE)
    offsets = torch.arange(EVAL_SEQ_LEN + 1, device=device)
    positions = torch.arange(EVAL_SEQ_LEN, device=device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    scored = 0
    for i in tqdm(range(0, len(plan), batch_size), desc="eval val_bpc", disable=None):
        starts, firsts = zip(*plan[i:i + batch_size])
        windows = val[torch.tensor(starts, device=device)[:, None] + offsets].long()
        x, y = windows[:, :-1], windows[:, 1:]
        log_probs = _target_log_probs(model_fn, x).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        mask = positions[None, :] >= torch.tensor(firsts, device=device)[:, None]
        total_nats -= torch.where(mask, log_probs, 0.0).sum(dtype=torch.float64)
        scored += sum(EVAL_SEQ_LEN - first for first in firsts)
    assert scored == n_chars, f"scored {scored} characters, planned {n_chars}"
    return total_nats.item() / (math.log(2) * n_chars)


# ---------------------------------------------------------------------------------------------
# Stand-alone use: python -m prepare.enwik8 [--from-files PATH ...] [--force]

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Download or ingest enwik8 and write its splits.")
    parser.add_argument("--from-files", nargs="+", metavar="PATH",
                        help="a local enwik8.zip / .gz / raw file (globs allowed) instead of the download")
    parser.add_argument("--force", action="store_true", help="redo the splits even if they exist")
    prepare_enwik8(parser.parse_args(argv))


if __name__ == "__main__":
    main()
