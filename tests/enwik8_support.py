"""Helpers shared by the enwik8 tests (no tests here): offline stand-in data for enwik8, a prepared
cache of it, and the environment of a smoke training on the CPU.

The `enwik8_cache` fixture (tests/conftest.py) prepares the cache once per session with
`prepare_stub_cache`; tests only read it."""
from __future__ import annotations

import importlib.util
import os
import sysconfig
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUB_BYTES = 2_000_000          # 1.8 M train / 100 k val / 100 k test characters


def stub_bytes(n: int) -> bytes:
    """n bytes of real text: the standard library's own sources, in a fixed order."""
    data = b""
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        data += path.read_bytes()
        if len(data) >= n:
            return data[:n]
    raise RuntimeError("not enough stdlib text")


def prepare_stub_cache(root: Path, n_bytes: int = STUB_BYTES) -> Path:
    """Split n_bytes of stub text into root/cache/enwik8/{train,val,test}.bin; returns the cache root
    (what AUTORESEARCH_CACHE must name)."""
    import prepare.enwik8 as enwik8

    source, cache = root / "text", root / "cache"
    source.write_bytes(stub_bytes(n_bytes))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTORESEARCH_CACHE", str(cache))
        enwik8.prepare([str(source)])
    return cache


def smoke_env(cache: Path, **extra: str) -> dict[str, str]:
    """This process's environment less any AUTORESEARCH_*/USE_FP* setting, plus a CPU smoke run on
    `cache` with a 4 s budget; `extra` adds or overrides variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTORESEARCH_", "USE_FP"))}
    env.update(AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_SMOKE="1", AUTORESEARCH_TIME_BUDGET="4",
               AUTORESEARCH_DEVICE="cpu", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def load_train_module(name: str = "train_enwik8_under_test") -> types.ModuleType:
    """A fresh import of engine/train_enwik8.py: its constants and functions, nothing built (main() is
    not called), so a test can patch its hyperparameters and call build_model & co."""
    spec = importlib.util.spec_from_file_location(name, REPO / "engine" / "train_enwik8.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def use_small_evaluation(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """Point prepare.enwik8 at `cache` and shrink its metric to 64-char windows sliding by 32 over
    3,001 characters (deliberately not a multiple of the stride)."""
    import prepare.enwik8 as enwik8

    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    monkeypatch.setattr(enwik8, "EVAL_SEQ_LEN", 64)
    monkeypatch.setattr(enwik8, "EVAL_STRIDE", 32)
    monkeypatch.setattr(enwik8, "EVAL_CHARS", 3_001)
