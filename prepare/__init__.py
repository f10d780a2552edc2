"""The fixed side of every experiment: constants, data, tokenizer, dataloader and the metric.

Train files import from here; agents never edit it. `python -m prepare` does the one-time set-up.
The tokenizer and the torch-based parts load on first use, so the CLI, the constants and
`prepare.runtime` (which sets the process up before the train file imports torch) stay quick to import.
"""
from .cache import cache_dir, data_dir, tokenizer_dir
from .constants import EVAL_TOKENS, MAX_SEQ_LEN, TIME_BUDGET, VOCAB_SIZE

_LAZY = {"make_dataloader": "dataloader", "evaluate_bpb": "evaluate", "CausalityError": "evaluate",
         "Tokenizer": "tokenizer", "get_token_bytes": "tokenizer"}

__all__ = [
    "MAX_SEQ_LEN", "TIME_BUDGET", "EVAL_TOKENS", "VOCAB_SIZE", "Tokenizer", "get_token_bytes",
    "make_dataloader", "evaluate_bpb", "CausalityError", "cache_dir", "data_dir", "tokenizer_dir",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
