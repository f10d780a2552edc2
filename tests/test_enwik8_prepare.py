"""enwik8 data preparation: local archives, the download path (loopback stub server), the split."""
import gzip
import http.server
import json
import subprocess
import sys
import threading
import zipfile
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

import prepare.enwik8 as enwik8
from enwik8_support import REPO, stub_bytes


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AUTORESEARCH_ENWIK8_URL", raising=False)
    return tmp_path / "cache" / "enwik8"


@pytest.fixture(scope="module")
def text():
    return stub_bytes(2_000_003)


def make_zip(path: Path, data: bytes, member: str = "enwik8") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)
    return path


def read_splits(directory: Path) -> list[bytes]:
    return [(directory / f"{name}.bin").read_bytes() for name in enwik8.SPLITS]


def test_split_sizes_are_the_enwik8_convention():
    assert enwik8.split_sizes(100_000_000) == {"train": 90_000_000, "val": 5_000_000, "test": 5_000_000}
    sizes = enwik8.split_sizes(2_000_003)
    assert sizes == {"train": 1_800_002, "val": 100_000, "test": 100_001}


def test_local_zip_is_split_90_5_5_and_reused(cache, tmp_path, text, capsys):
    archive = make_zip(tmp_path / "enwik8.zip", text)
    meta = enwik8.prepare([str(archive)])
    train, val, test = read_splits(cache)
    assert (len(train), len(val), len(test)) == (1_800_002, 100_000, 100_001)
    assert train + val + test == text
    assert meta["genuine_enwik8"] is False and "not the published enwik8" in capsys.readouterr().out
    assert np.array_equal(np.asarray(enwik8.load_split("val")), np.frombuffer(val, dtype=np.uint8))

    before = (cache / "train.bin").stat().st_mtime_ns
    enwik8.prepare([str(archive)])
    assert "already prepared" in capsys.readouterr().out
    assert (cache / "train.bin").stat().st_mtime_ns == before


def test_raw_and_gzip_files_give_the_same_splits(cache, tmp_path, text):
    raw = tmp_path / "enwik8"
    raw.write_bytes(text)
    enwik8.prepare([str(raw)])
    from_raw = read_splits(cache)
    packed = tmp_path / "enwik8.gz"
    packed.write_bytes(gzip.compress(text))
    enwik8.prepare([str(packed)])                  # another source: prepared again
    assert read_splits(cache) == from_raw


def test_several_files_are_concatenated_in_order(cache, tmp_path, text):
    half = len(text) // 2
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.txt").write_bytes(text[:half])
    (tmp_path / "parts" / "b.txt").write_bytes(text[half:])
    enwik8.prepare([str(tmp_path / "parts" / "*.txt")])
    assert b"".join(read_splits(cache)) == text


def test_bad_input_is_one_clear_error(cache, tmp_path, text):
    small = make_zip(tmp_path / "small.zip", text[:50_000])
    with pytest.raises(SystemExit, match="only 50,000 bytes"):
        enwik8.prepare_enwik8(Namespace(from_files=[str(small)]))
    with pytest.raises(SystemExit, match="no file matches"):
        enwik8.prepare_enwik8(Namespace(from_files=[str(tmp_path / "nothing*.zip")]))
    broken = tmp_path / "broken.zip"
    broken.write_bytes(make_zip(tmp_path / "ok.zip", text).read_bytes()[:100_000])
    with pytest.raises(SystemExit, match="broken|only"):
        enwik8.prepare_enwik8(Namespace(from_files=[str(broken)]))
    assert not (cache / "meta.json").exists()


def test_the_official_url_must_deliver_the_real_enwik8(text):
    with pytest.raises(enwik8.PrepareError, match="published enwik8"):
        enwik8.check_source(text, must_be_enwik8=True)
    assert enwik8.check_source(text, must_be_enwik8=False)["genuine_enwik8"] is False


def test_missing_split_names_the_prepare_command(cache):
    with pytest.raises(FileNotFoundError, match="python -m prepare --task enwik8"):
        enwik8.load_split("train")


# --- the download path, against a loopback server ---------------------------------------------

class StubServer:
    """Serves `body` at any path; each request first consumes one scripted failure, if any left."""

    def __init__(self, body: bytes, failures: list[str]):
        self.body, self.failures, self.requests = body, list(failures), 0
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                stub.requests += 1
                failure = stub.failures.pop(0) if stub.failures else None
                if failure in ("503", "404"):
                    self.send_error(int(failure))
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(stub.body)))
                self.end_headers()
                self.wfile.write(stub.body[:len(stub.body) // 2] if failure == "truncated" else stub.body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/enwik8.zip"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve(monkeypatch):
    monkeypatch.setattr(enwik8, "DOWNLOAD_BACKOFF_S", 0.0)
    servers = []

    def start(body: bytes, failures=()):
        server = StubServer(body, list(failures))
        servers.append(server)
        monkeypatch.setenv("AUTORESEARCH_ENWIK8_URL", server.url)
        return server

    yield start
    for server in servers:
        server.close()


def test_download_survives_errors_and_truncation(cache, tmp_path, text, serve, capsys):
    server = serve(make_zip(tmp_path / "enwik8.zip", text).read_bytes(), ["503", "truncated"])
    meta = enwik8.prepare()
    assert server.requests == 3
    assert b"".join(read_splits(cache)) == text
    assert meta["source"] == {"url": server.url}
    assert capsys.readouterr().out.count("retrying") == 2
    assert sorted(p.name for p in cache.iterdir()) == ["meta.json", "test.bin", "train.bin", "val.bin"]


def test_download_gives_up_with_one_line(cache, tmp_path, text, serve):
    server = serve(b"", ["503"] * 10)
    with pytest.raises(SystemExit, match="failed after 3 attempt"):
        enwik8.prepare_enwik8(Namespace(from_files=None, retries=3))
    assert server.requests == 3
    missing = serve(b"", ["404"] * 10)
    with pytest.raises(SystemExit, match="failed after 1 attempt"):
        enwik8.prepare_enwik8(Namespace(from_files=None))
    assert missing.requests == 1                   # a 404 is not retried


def test_prepare_cli_dispatches_to_enwik8(tmp_path, text):
    archive = make_zip(tmp_path / "enwik8.zip", text)
    env = {"AUTORESEARCH_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "prepare", "--task", "enwik8", "--from-files", str(archive)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "cache" / "enwik8" / "meta.json").read_text())
    assert meta["splits"]["val"] == len(text) * 5 // 100
