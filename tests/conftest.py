"""Shared fixtures.

`prepared_cache` (session scope) builds a small but real cache once: the Python standard
library's top-level modules, cut into documents at their top-level definitions (~4.7 MB, ~1,800
documents of varied length, like web pages), ingested with `python -m prepare --from-files`
(10 % validation), and a BPE of TEST_VOCAB_SIZE tokens trained on them. It sets
AUTORESEARCH_CACHE for the rest of the session (subprocesses inherit it) and returns the cache
root. Tests that train or evaluate on it should also set AUTORESEARCH_SMOKE=1 (MAX_SEQ_LEN 256,
EVAL_TOKENS 32768).
"""
from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

TEST_VOCAB_SIZE = 1024


def write_corpus(directory: Path) -> Path:
    """A fixed, offline text corpus: one file per top-level block of each stdlib module."""
    directory.mkdir(parents=True, exist_ok=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for module in sorted(stdlib.glob("*.py")):
        blocks = module.read_text(encoding="utf-8").split("\n\n\n")
        for i, block in enumerate(b for b in blocks if b.strip()):
            (directory / f"{module.stem}.{i:04d}.txt").write_text(block, encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def prepared_cache(tmp_path_factory) -> Path:
    from prepare.cli import main

    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    root = tmp_path_factory.mktemp("autoresearch-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTORESEARCH_CACHE", str(root))
        code = main(["--from-files", str(corpus), "--val-fraction", "0.1", "--vocab-size", str(TEST_VOCAB_SIZE)])
        assert code == 0, "building the test cache failed"
        yield root


@pytest.fixture(scope="session", autouse=True)
def ray_without_token_auth():
    """Every local test Ray runs without token auth. With it, Ray caches the first token in this
    process for good, so a later test's Ray (another HOME, another cluster) kills its actors at start."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        yield


@pytest.fixture(scope="session")
def enwik8_cache(tmp_path_factory) -> Path:
    """A prepared enwik8 cache built once (2 MB of stdlib text split 90/5/5; tests/enwik8_support.py).
    Returns the cache root for AUTORESEARCH_CACHE; tests must not write into it."""
    from enwik8_support import prepare_stub_cache

    return prepare_stub_cache(tmp_path_factory.mktemp("enwik8"))


# The interpreter's own teardown, after the last test and the summary (third-party threads going
# away: Ray's core worker, grpc, inductor's compile pool), has been seen to end in a segfault once
# in two full runs with every test passed; the run's exit status must be pytest's, not that one.
# AUTORESEARCH_TEST_NORMAL_EXIT=1 lets the interpreter tear down as usual, to chase that crash.
_exit_status: int | None = None


# The longest files first (about a minute or more each on 2 cores): with two test processes taking a
# file at a time (pyproject.toml), the run then ends on short files instead of waiting on one long one.
LONGEST_FIRST = ("test_adversarial.py", "test_ray_up.py", "test_faults.py", "test_app_browser.py",
                 "test_real_agents.py", "test_driver.py", "test_enwik8_population.py", "test_trusted_eval.py",
                 "test_cluster_nodes.py", "test_enwik8_train.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))   # stable: a file keeps its order


def pytest_sessionfinish(session, exitstatus):
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _exit_status is not None and not os.environ.get("AUTORESEARCH_TEST_NORMAL_EXIT"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)
