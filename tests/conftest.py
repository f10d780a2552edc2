"""Shared fixtures.

`prepared_cache` (session scope) builds a small but real cache once: the Python standard
library's top-level sources (~4.7 MB, ~170 documents) ingested with `python -m prepare
--from-files`, and a BPE of TEST_VOCAB_SIZE tokens trained on them. It sets AUTORESEARCH_CACHE
for the rest of the session (subprocesses inherit it) and returns the cache root. Tests that
train or evaluate on it should also set AUTORESEARCH_SMOKE=1 (MAX_SEQ_LEN 256, EVAL_TOKENS 32768).
"""
from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

TEST_VOCAB_SIZE = 1024


def corpus_files() -> list[str]:
    """A fixed, offline text corpus: the standard library's top-level modules."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(str(p) for p in stdlib.glob("*.py"))


@pytest.fixture(scope="session")
def prepared_cache(tmp_path_factory) -> Path:
    from prepare.cli import main

    root = tmp_path_factory.mktemp("autoresearch-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTORESEARCH_CACHE", str(root))
        code = main(["--from-files", *corpus_files(), "--vocab-size", str(TEST_VOCAB_SIZE)])
        assert code == 0, "building the test cache failed"
        yield root
