"""Per-node readiness: prepare once per node under a file lock, refuse a cache unlike the driver's."""
from __future__ import annotations

import fcntl
import multiprocessing
import os
import re
from pathlib import Path

import pytest

from population import readiness
from population.readiness import NodeNotReady, cache_fingerprint, ensure_node_ready, reads_prepared_data
from prepare.tasks import get_task

CLIMBMIX = get_task("climbmix")
MISMATCH = re.compile(r"^node \S+: tokenizer/validation data differ from the driver's \([0-9a-f]{12} vs [0-9a-f]{12}\); "
                      r"run `python -m prepare` with the same corpus on every node$")


def fake_climbmix_cache(cache_dir: Path, tokenizer: str = "tokenizer v1") -> None:
    """The files a prepared climbmix cache holds, where prepare's path helpers put them."""
    for path in readiness.fingerprint_files(CLIMBMIX, cache_dir) + readiness.required_files(CLIMBMIX, cache_dir):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(tokenizer if path.name == "tokenizer.json" else f"contents of {path.name}")


def counting_prepare(task, cache_dir, prepare_args):
    """A stand-in for `python -m prepare`: counts its calls in a marker file, takes its time."""
    with open(Path(cache_dir) / "prepare-calls", "a") as marker:
        marker.write(" ".join(prepare_args) + "\n")
    import time
    time.sleep(1.0)                          # long enough for the other racer to arrive and wait
    fake_climbmix_cache(Path(cache_dir))


def _racer(cache_dir: str, start, results) -> None:
    start.wait()
    try:
        results.put(ensure_node_ready("climbmix", cache_dir, None, ["--num-shards", "2"], lock_timeout=60,
                                      prepare=counting_prepare))
    except Exception as error:               # reported to the test, not lost in the child
        results.put(f"error: {error}")


def test_two_workers_racing_prepare_once(tmp_path):
    cache_dir = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(2), context.Queue()
    racers = [context.Process(target=_racer, args=(str(cache_dir), start, results)) for _ in range(2)]
    for racer in racers:
        racer.start()
    fingerprints = [results.get(timeout=60) for _ in racers]
    for racer in racers:
        racer.join(timeout=30)
    assert (cache_dir / "prepare-calls").read_text().splitlines() == ["--num-shards 2"]
    assert fingerprints[0] == fingerprints[1] == cache_fingerprint("climbmix", cache_dir)


def test_matching_cache_passes_without_preparing(tmp_path):
    driver, node = tmp_path / "driver", tmp_path / "node"
    fake_climbmix_cache(driver)
    fake_climbmix_cache(node)

    def must_not_run(*args):
        raise AssertionError("prepare ran on a ready node")

    expected = cache_fingerprint(CLIMBMIX, driver)
    assert ensure_node_ready(CLIMBMIX, node, expected, prepare=must_not_run) == expected


def test_differing_tokenizer_is_refused_in_one_line(tmp_path):
    driver, node = tmp_path / "driver", tmp_path / "node"
    fake_climbmix_cache(driver, tokenizer="tokenizer v1")
    fake_climbmix_cache(node, tokenizer="tokenizer v2")
    with pytest.raises(NodeNotReady) as raised:
        ensure_node_ready(CLIMBMIX, node, cache_fingerprint(CLIMBMIX, driver), prepare=counting_prepare)
    assert MISMATCH.match(str(raised.value)), str(raised.value)
    assert not (node / "prepare-calls").exists()


def test_fingerprint_ignores_training_shards_not_the_validation_shard(tmp_path):
    fake_climbmix_cache(tmp_path)
    before = cache_fingerprint(CLIMBMIX, tmp_path)
    train_shard = readiness.required_files(CLIMBMIX, tmp_path)[-1]
    train_shard.write_text("more training data")
    assert cache_fingerprint(CLIMBMIX, tmp_path) == before
    readiness.fingerprint_files(CLIMBMIX, tmp_path)[1].write_text("another validation shard")
    assert cache_fingerprint(CLIMBMIX, tmp_path) != before


def test_prepare_that_leaves_files_missing_is_an_error(tmp_path):
    with pytest.raises(NodeNotReady, match=r"ran but .*tokenizer\.json is still missing"):
        ensure_node_ready(CLIMBMIX, tmp_path, None, prepare=lambda *args: None)


def test_lock_held_too_long_times_out(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / readiness.LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(NodeNotReady, match="waited 0.3 s for another worker preparing"):
            ensure_node_ready(CLIMBMIX, tmp_path, None, lock_timeout=0.3, prepare=counting_prepare)
    assert not (tmp_path / "prepare-calls").exists()


def test_enwik8_prepared_for_real_and_fingerprinted_by_val_and_test(tmp_path):
    """The default preparer: `python -m prepare --task enwik8 --from-files` into the given cache."""
    source = tmp_path / "corpus.bin"
    source.write_bytes(os.urandom(1_000_000))
    cache_dir = tmp_path / "cache"
    fingerprint = ensure_node_ready("enwik8", cache_dir, None, ["--from-files", str(source)], lock_timeout=60)
    names = sorted(p.name for p in (cache_dir / "enwik8").iterdir())
    assert names == ["meta.json", "test.bin", "train.bin", "val.bin"]
    assert ensure_node_ready("enwik8", cache_dir, fingerprint, prepare=None) == fingerprint   # ready: no prepare

    (cache_dir / "enwik8" / "train.bin").write_bytes(b"other training bytes")
    assert cache_fingerprint("enwik8", cache_dir) == fingerprint
    (cache_dir / "enwik8" / "test.bin").write_bytes(b"other test bytes")
    with pytest.raises(NodeNotReady, match=r"differ from the driver's .* run `python -m prepare --task enwik8`"):
        ensure_node_ready("enwik8", cache_dir, fingerprint)


def test_failing_prepare_names_its_error_and_log(tmp_path):
    with pytest.raises(NodeNotReady) as raised:
        ensure_node_ready("climbmix", tmp_path, None, ["--from-files", str(tmp_path / "no-such-file")], lock_timeout=60)
    message = str(raised.value)
    assert "`python -m prepare` failed:" in message and "no-such-file" in message
    assert "\n" not in message and str(tmp_path / readiness.PREPARE_LOG) in message


@pytest.mark.parametrize("source, reads", [
    ("from prepare import MAX_SEQ_LEN, evaluate_bpb\n", True),
    ("import prepare.cache as cache\n", True),
    ("def main():\n    from prepare.tasks import get_task\n", True),     # imported late still counts
    ("import os, prepare\n", True),
    ("import preparation\nfrom prepared import x\n", False),           # other modules that start alike
    ("from .prepare import x\n", False),                                 # a relative import is the file's own
    ("import json\nprint('---')\nprint('val_bpb: 1.0')\n", False),     # a stand-in that makes up its metric
    ("def broken(:\n", True),                                            # does not parse: its training will say
])
def test_a_train_file_reads_prepared_data_when_it_imports_prepare(source, reads):
    assert reads_prepared_data(source) is reads


def test_both_seed_train_files_read_prepared_data():
    root = Path(__file__).resolve().parent.parent
    for name in ("train.py", "train_enwik8.py"):
        assert reads_prepared_data((root / "engine" / name).read_text()), name
