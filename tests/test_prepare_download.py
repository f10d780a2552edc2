"""Downloads against a loopback stub of the Hugging Face hub (what hf_hub_download requests:
HEAD then GET on /datasets/<repo>/resolve/<revision>/<file>, with X-Repo-Commit, ETag and
Content-Length on the HEAD answer, Range requests to resume)."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prepare.constants import HF_REPO_ID
from prepare.download import DownloadError, download_shard, download_shards, shard_indices

REPO_ROOT = Path(__file__).resolve().parent.parent
VAL = 6542


def parquet_bytes(docs: list[str]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": docs}), buffer)
    return buffer.getvalue()


class HubStub:
    """Serves `files`; `faults[(method, name)]` is a list of faults used up one per such request:
    503 (server error), 'corrupt' (GET body with one byte flipped), 'truncate' (GET closes early)."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.faults: dict[str, list] = {}
        self.requests: list[tuple[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _target(self):
                prefix = f"/datasets/{HF_REPO_ID}/resolve/main/"
                return self.path[len(prefix):] if self.path.startswith(prefix) else None

            def _answer(self, with_body: bool):
                name = self._target()
                stub.requests.append((self.command, name))
                if name not in stub.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                pending = stub.faults.get((self.command, name))
                fault = pending.pop(0) if pending else None
                if fault == 503:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = stub.files[name]
                start = 0
                if with_body and self.headers.get("Range", "").startswith("bytes="):
                    start = int(self.headers["Range"][6:].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", "a" * 40)
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if not with_body:
                    return
                if fault == "corrupt":
                    body = body[:len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + body[len(body) // 2 + 1:]
                if fault == "truncate":
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def do_HEAD(self):
                self._answer(with_body=False)

            def do_GET(self):
                self._answer(with_body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def count(self, method: str, name: str) -> int:
        return Counter(self.requests)[(method, name)]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def shard_files(n_train: int = 2) -> dict[str, bytes]:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    files = {}
    for index in list(range(n_train)) + [VAL]:
        docs = [" ".join(words[(index + i + j) % len(words)] for j in range(40 + i)) + f" {index}-{i} é 你好"
                for i in range(60)]
        files[f"shard_{index:05d}.parquet"] = parquet_bytes(docs)
    return files


@pytest.fixture
def hub():
    with HubStub(shard_files()) as stub:
        yield stub


def test_shard_indices_adds_the_validation_shard_and_rejects_bad_counts():
    assert shard_indices(3) == [0, 1, 2, VAL]
    assert len(shard_indices(-1)) == VAL + 1
    with pytest.raises(ValueError, match="--num-shards"):
        shard_indices(-2)


def test_downloads_every_shard_in_parallel_and_byte_identical(hub, tmp_path):
    data = tmp_path / "data"
    assert download_shards(shard_indices(2), data, workers=3, endpoint=hub.url, backoff_s=0) == 3
    for name, body in hub.files.items():
        assert (data / name).read_bytes() == body
    assert not (data / ".download").exists()
    # A second run finds complete files and asks the hub for nothing.
    before = len(hub.requests)
    assert download_shards(shard_indices(2), data, workers=3, endpoint=hub.url, backoff_s=0) == 0
    assert len(hub.requests) == before
    # --force fetches again, and replaces the files only once the new copies are verified.
    hub.faults[("GET", "shard_00000.parquet")] = ["corrupt"] * 2
    with pytest.raises(DownloadError, match="sha256"):
        download_shard(0, data, endpoint=hub.url, retries=2, backoff_s=0, force=True)
    assert (data / "shard_00000.parquet").read_bytes() == hub.files["shard_00000.parquet"]
    assert download_shards(shard_indices(2), data, workers=3, endpoint=hub.url, backoff_s=0, force=True) == 3


def test_retries_server_errors_and_a_corrupt_body_then_succeeds(hub, tmp_path):
    name = "shard_00001.parquet"
    hub.faults[("HEAD", name)] = [503, 503]
    hub.faults[("GET", name)] = ["corrupt"]
    assert download_shard(1, tmp_path, endpoint=hub.url, retries=5, backoff_s=0)
    assert (tmp_path / name).read_bytes() == hub.files[name]
    assert hub.count("GET", name) == 2   # the corrupt body failed its sha256 check and was fetched again


def test_an_interrupted_transfer_is_resumed_or_refetched(hub, tmp_path):
    name = "shard_00000.parquet"
    hub.faults[("GET", name)] = ["truncate"]
    assert download_shard(0, tmp_path, endpoint=hub.url, retries=3, backoff_s=0)
    assert (tmp_path / name).read_bytes() == hub.files[name]


def test_a_partial_file_left_in_place_is_fetched_again_and_complete_ones_are_kept(hub, tmp_path):
    partial, complete = "shard_00000.parquet", "shard_00001.parquet"
    (tmp_path / partial).write_bytes(hub.files[partial][:100])
    (tmp_path / complete).write_bytes(hub.files[complete])
    stale = tmp_path / ".download" / "old.incomplete"
    stale.parent.mkdir()
    stale.write_bytes(b"junk")
    assert download_shards(shard_indices(2), tmp_path, workers=2, endpoint=hub.url, backoff_s=0) == 2
    assert (tmp_path / partial).read_bytes() == hub.files[partial]
    assert hub.count("GET", complete) == 0
    assert not stale.exists()


def test_gives_up_after_the_last_attempt_with_the_reason(hub, tmp_path):
    name = "shard_00000.parquet"
    hub.faults[("HEAD", name)] = [503] * 10
    with pytest.raises(DownloadError, match=r"shard_00000.parquet: .*503.*attempt 3 of 3"):
        download_shard(0, tmp_path, endpoint=hub.url, retries=3, backoff_s=0)
    assert not (tmp_path / name).exists()


def test_a_missing_file_is_not_retried(hub, tmp_path):
    with pytest.raises(DownloadError, match="attempt 1 of 5"):
        download_shard(7, tmp_path, endpoint=hub.url, retries=5, backoff_s=0)
    assert hub.count("HEAD", "shard_00007.parquet") == 1


def test_a_file_that_is_not_parquet_is_refused(hub, tmp_path):
    hub.files["shard_00000.parquet"] = b"<html>not a parquet file</html>" * 10
    with pytest.raises(DownloadError, match="not a readable parquet file"):
        download_shard(0, tmp_path, endpoint=hub.url, retries=2, backoff_s=0)
    assert not (tmp_path / "shard_00000.parquet").exists()


def run_cli(args: list[str], cache: Path, endpoint: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, AUTORESEARCH_CACHE=str(cache), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "prepare", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_downloads_through_hf_endpoint_and_trains_the_tokenizer(hub, tmp_path):
    result = run_cli(["--num-shards", "2", "--vocab-size", "300", "--download-workers", "2"], tmp_path, hub.url)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "data").glob("*.parquet")) == sorted(hub.files)
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()
    assert hub.count("GET", "shard_06542.parquet") == 1


def test_cli_reports_an_unreachable_hub_in_one_line(tmp_path):
    with HubStub({}) as dead:
        url = dead.url   # the port is closed once the stub is gone
    result = run_cli(["--num-shards", "1", "--retries", "1"], tmp_path, url)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("prepare: error:")]
    assert len(lines) == 1 and "shard_" in lines[0], result.stderr


def test_cli_reports_a_corrupt_shard_in_one_line(hub, tmp_path):
    hub.files[f"shard_{VAL:05d}.parquet"] = b"PAR1 but not really" * 50
    result = run_cli(["--num-shards", "1", "--retries", "1"], tmp_path, hub.url)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "prepare: error: shard_06542.parquet" in result.stderr and "parquet" in result.stderr.splitlines()[-1]


def test_an_offline_machine_fails_at_once_pointing_at_from_files(tmp_path):
    """A host name that does not resolve (an offline machine) is one line within seconds, naming
    --from-files, instead of minutes of retries (issue 29)."""
    start = time.monotonic()
    result = run_cli(["--num-shards", "1"], tmp_path, "https://no-such-hub.invalid")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("prepare: error:")]
    assert len(lines) == 1 and "cannot resolve no-such-hub.invalid" in lines[0], result.stderr
    assert "this machine looks offline" in lines[0] and "python -m prepare --from-files" in lines[0]
    assert time.monotonic() - start < 30 and not (tmp_path / "data").exists()


def test_shards_already_here_prepare_on_an_offline_machine(tmp_path):
    """With every shard it asks for already on disk, prepare needs no hub: an offline machine
    (a name that does not resolve) trains the tokenizer from them instead of refusing."""
    data = tmp_path / "data"
    data.mkdir()
    for index in (0, VAL):
        docs = [f"document {index}-{i}: the quick brown fox {i * 7} jumps over the lazy dog\n" * 3 for i in range(200)]
        (data / f"shard_{index:05d}.parquet").write_bytes(parquet_bytes(docs))
    result = run_cli(["--num-shards", "1", "--vocab-size", "300"], tmp_path, "https://no-such-hub.invalid")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()
