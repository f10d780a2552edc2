"""`python -m prepare`: fetch or ingest the data, then train the tokenizer (one-time set-up)."""
from __future__ import annotations

import argparse
import sys

from .cache import data_dir, tokenizer_dir, train_shard_paths, val_shard_path
from .constants import HF_REPO_ID, MAX_SHARD, VOCAB_SIZE
from .corpus import VAL_FRACTION
from .tasks import DEFAULT_TASK, TASKS, get_task

EPILOG = """examples:
  python -m prepare                                  # 10 ClimbMix shards + validation, 8192-token BPE
  python -m prepare --num-shards -1                  # every training shard (~6.5k files)
  python -m prepare --from-files '~/corpus/**/*.md'  # a local corpus instead of ClimbMix
  python -m prepare --task enwik8                    # the character-level enwik8 task

The cache lives in $AUTORESEARCH_CACHE (default ~/.cache/autoresearch); HF_ENDPOINT selects a
hub mirror. A shard already downloaded is skipped, so an interrupted run can simply be repeated."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m prepare", description=__doc__.split(":", 1)[1].strip(), epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(TASKS), default=DEFAULT_TASK,
                        help=f"what to prepare (default {DEFAULT_TASK})")
    parser.add_argument("--num-shards", type=int, default=10, metavar="N",
                        help=f"training shards of {HF_REPO_ID} to fetch (default 10, -1 = all {MAX_SHARD}); "
                             "the validation shard is always added")
    parser.add_argument("--download-workers", type=int, default=8, metavar="W",
                        help="parallel downloads (default 8)")
    parser.add_argument("--retries", type=int, default=5, metavar="R",
                        help="attempts per file before giving up, with exponential back-off (default 5)")
    parser.add_argument("--from-files", nargs="+", metavar="GLOB",
                        help="build the shards from local text files instead of downloading (each file is "
                             "one document; `**` recurses; a directory means all files in it)")
    parser.add_argument("--val-fraction", type=float, default=VAL_FRACTION, metavar="F",
                        help=f"with --from-files: share of the documents held out for validation (default {VAL_FRACTION})")
    parser.add_argument("--force", action="store_true",
                        help="fetch every file again (replaced only once verified) and retrain the tokenizer")
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE, metavar="V",
                        help=f"tokenizer vocabulary including 4 special tokens (default {VOCAB_SIZE})")
    return parser


def _ensure_tokenizer(vocab_size: int, retrain: bool) -> None:
    from .corpus import tokenizer_texts
    from .tokenizer import Tokenizer, train_tokenizer

    if not retrain:
        try:
            if Tokenizer.from_directory().get_vocab_size() == vocab_size:
                print(f"tokenizer: up to date in {tokenizer_dir()}")
                return
        except (FileNotFoundError, ValueError):
            pass
    from tqdm import tqdm

    from .corpus import count_documents

    print(f"tokenizer: training a {vocab_size}-token BPE on the training shards ...", flush=True)
    texts = tqdm(tokenizer_texts(), total=count_documents(train_shard_paths()), desc="tokenizer text",
                 unit="doc", unit_scale=True)
    tokenizer = train_tokenizer(texts, vocab_size)
    texts.close()
    path = tokenizer.save()
    print(f"tokenizer: {tokenizer.get_vocab_size()} tokens -> {path}")


def prepare_climbmix(args: argparse.Namespace) -> None:
    """The climbmix task's set-up: shards (downloaded or ingested), then the tokenizer."""
    from .corpus import check_shard

    directory = data_dir()
    if args.from_files:
        from tqdm import tqdm

        from .corpus import expand_patterns, read_documents, split_documents, write_shards

        files = expand_patterns(args.from_files)
        docs, skipped = read_documents(tqdm(files, desc="reading files", unit="file"))
        train, val = split_documents(docs, args.val_fraction)
        written = write_shards(train, val, directory)
        print(f"data: {len(docs)} documents from {len(files)} files ({skipped} skipped: empty or not UTF-8 text): "
              f"{len(train)} train in {len(written) - 1} shards, {len(val)} validation -> {directory}")
    else:
        from huggingface_hub.utils import logging as hf_logging

        from .download import download_shards, shard_indices

        hf_logging.set_verbosity_error()   # our own error says what failed, once
        indices = shard_indices(args.num_shards)
        fetched = download_shards(indices, directory, workers=args.download_workers, retries=args.retries,
                                  force=args.force)
        print(f"data: {fetched} shards downloaded, {len(indices) - fetched} already present -> {directory}")
    shards = train_shard_paths(directory)
    if not shards:
        raise FileNotFoundError(f"no training shards in {directory}")
    if not val_shard_path(directory).is_file():
        raise FileNotFoundError(f"validation shard {val_shard_path(directory)} is missing")
    for path in shards + [val_shard_path(directory)]:
        check_shard(path)
    _ensure_tokenizer(args.vocab_size, retrain=bool(args.from_files) or args.force)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        get_task(args.task).prepare(args)
    except KeyboardInterrupt:
        print("prepare: interrupted; run it again to resume", file=sys.stderr)
        return 130
    except Exception as error:  # the CLI boundary: one line, no traceback
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"prepare: error: {message}", file=sys.stderr)
        return 1
    return 0
