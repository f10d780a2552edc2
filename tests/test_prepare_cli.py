"""`python -m prepare` and the environment: bad input gives one clear line and a non-zero exit."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], cache: Path, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    full_env.update(AUTORESEARCH_CACHE=str(cache), **env)
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=full_env, capture_output=True,
                          text=True, timeout=120)


def assert_one_error_line(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_from_files_builds_the_shard_layout_and_tokenizer(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i}.txt").write_text(f"document {i}: " + "lorem ipsum dolor sit amet, 你好 " * (i + 1))
    (corpus / "blob.bin").write_bytes(b"\xff\xfe\x00binary")
    (corpus / "dup.txt").write_text((corpus / "doc3.txt").read_text())
    result = run(["-m", "prepare", "--from-files", str(corpus / "*"), "--vocab-size", "300"], tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert "40 documents from 42 files (1 skipped: empty or not UTF-8 text)" in result.stdout
    data = tmp_path / "cache" / "data"
    train = pq.read_table(data / "shard_00000.parquet").column("text").to_pylist()
    val = pq.read_table(data / "shard_06542.parquet").column("text").to_pylist()
    assert len(val) == 2 and len(train) == 38 and not set(train) & set(val)
    assert (tmp_path / "cache" / "tokenizer" / "tokenizer.json").is_file()
    # The split depends on contents only: the same files again give the same shards.
    again = run(["-m", "prepare", "--from-files", str(corpus), "--vocab-size", "300"], tmp_path / "cache")
    assert again.returncode == 0, again.stderr
    assert pq.read_table(data / "shard_06542.parquet").column("text").to_pylist() == val


def test_a_pattern_that_matches_nothing(tmp_path):
    result = run(["-m", "prepare", "--from-files", str(tmp_path / "nothing" / "*.txt")], tmp_path / "cache")
    assert_one_error_line(result, "matches nothing")


def test_a_single_document_is_not_a_corpus(tmp_path):
    (tmp_path / "only.txt").write_text("just one document")
    result = run(["-m", "prepare", "--from-files", str(tmp_path / "only.txt")], tmp_path / "cache")
    assert_one_error_line(result, "at least 2")


def test_out_of_range_arguments(tmp_path):
    assert_one_error_line(run(["-m", "prepare", "--num-shards", "-3"], tmp_path), "--num-shards")
    assert_one_error_line(run(["-m", "prepare", "--num-shards", "1", "--download-workers", "0"], tmp_path),
                          "--download-workers")
    assert run(["-m", "prepare", "--task", "nope"], tmp_path).returncode == 2


def test_constants_follow_the_environment(tmp_path):
    code = "import prepare as p; print(p.MAX_SEQ_LEN, p.EVAL_TOKENS, p.TIME_BUDGET, p.VOCAB_SIZE)"
    assert run(["-c", code], tmp_path).stdout.split() == ["2048", str(40 * 524288), "300", "8192"]
    assert run(["-c", code], tmp_path, AUTORESEARCH_SMOKE="1").stdout.split() == ["256", "32768", "300", "8192"]
    overridden = run(["-c", code], tmp_path, AUTORESEARCH_SMOKE="1", AUTORESEARCH_EVAL_TOKENS="4096",
                     AUTORESEARCH_TIME_BUDGET="12.5")
    assert overridden.stdout.split() == ["256", "4096", "12.5", "8192"]
    assert_one_error_line(run(["-c", code], tmp_path, AUTORESEARCH_TIME_BUDGET="soon"), "AUTORESEARCH_TIME_BUDGET")
    assert_one_error_line(run(["-m", "prepare", "--help"], tmp_path, AUTORESEARCH_EVAL_TOKENS="-1"),
                          "AUTORESEARCH_EVAL_TOKENS")
