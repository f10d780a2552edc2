"""Tasks: what a population searches over.

A task names its prepare step, its seed train file (the one file agents may edit), its metric and
which direction is better, and the keys of its summary block. Everything else (driver, agents,
store, app) is shared.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    train_file: str            # path inside the repository, the only file an agent may change
    metric: str                # summary key that selection minimises or maximises
    lower_is_better: bool
    summary_keys: tuple[str, ...]
    prepare_entry: str         # "module:function" taking the parsed `python -m prepare` arguments
    description: str

    def prepare(self, args) -> None:
        module, func = self.prepare_entry.split(":")
        getattr(importlib.import_module(module), func)(args)

    def better(self, a: float, b: float) -> bool:
        """True when metric value `a` is strictly better than `b`."""
        return a < b if self.lower_is_better else a > b


_COMMON_KEYS = ("training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth")

TASKS: dict[str, Task] = {
    "climbmix": Task(
        name="climbmix",
        train_file="engine/train.py",
        metric="val_bpb",
        lower_is_better=True,
        summary_keys=("val_bpb",) + _COMMON_KEYS,
        prepare_entry="prepare.cli:prepare_climbmix",
        description="BPE GPT on ClimbMix (or a local corpus), judged by val_bpb",
    ),
    "enwik8": Task(
        name="enwik8",
        train_file="engine/train_enwik8.py",
        metric="val_bpc",
        lower_is_better=True,
        summary_keys=("val_bpc",) + _COMMON_KEYS,
        prepare_entry="prepare.enwik8:prepare_enwik8",
        description="character-level enwik8 with x-transformers, judged by val_bpc",
    ),
}
DEFAULT_TASK = "climbmix"


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None
