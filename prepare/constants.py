"""Fixed constants shared by every train file, read once at import.

The environment overrides exist so a whole population run (or a test) can shrink the budget or
the evaluation uniformly; agents never set them.
"""
from __future__ import annotations

import os


def _env_number(name: str, default, cast):
    """A positive number from the environment. A bad value ends the process with one line: it
    is set for a whole run, so nothing could sensibly go on with it."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = cast(float(raw))
    except (ValueError, OverflowError):
        value = None
    if value is None or not value > 0 or value == float("inf"):
        raise SystemExit(f"prepare: error: {name} must be a positive number, got {raw!r}")
    return value


SMOKE = os.environ.get("AUTORESEARCH_SMOKE", "") not in ("", "0")

# Context length for training and evaluation; the smoke configuration keeps CPU evaluation fast.
MAX_SEQ_LEN = 256 if SMOKE else 2048
# Training seconds: the same for every member of a population (the driver may set it).
TIME_BUDGET = _env_number("AUTORESEARCH_TIME_BUDGET", 300, float)
if TIME_BUDGET == int(TIME_BUDGET):
    TIME_BUDGET = int(TIME_BUDGET)
# Target positions of the validation shard that evaluate_bpb scores.
EVAL_TOKENS = _env_number("AUTORESEARCH_EVAL_TOKENS", 32_768 if SMOKE else 40 * 524_288, int)
VOCAB_SIZE = 8192

# The ClimbMix layout: training shards 0..N-1 plus one pinned validation shard.
HF_REPO_ID = "karpathy/climbmix-400b-shuffle"
HF_REPO_TYPE = "dataset"
MAX_SHARD = 6542
VAL_SHARD = MAX_SHARD
TEXT_COLUMN = "text"

# Tokenizer: 4 reserved specials appended after the merges; BOS is the first of them.
SPECIAL_TOKENS = tuple(f"<|reserved_{i}|>" for i in range(4))
BOS_TOKEN = SPECIAL_TOKENS[0]
# GPT-4's pre-tokenizer with numbers split in runs of at most 2 digits (as the reference).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# Tokenizer training text: each document cut at DOC_CAP characters, MAX_CHARS in total.
TOKENIZER_MAX_CHARS = 1_000_000_000
TOKENIZER_DOC_CAP = 10_000
