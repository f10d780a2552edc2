"""bench/enwik8.py's data fallback: without enwik8 (no network) it builds a byte file from local text."""
import importlib.util
from pathlib import Path

import prepare.enwik8 as enwik8

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_enwik8", REPO / "bench" / "enwik8.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_local_text_is_reproducible_and_exactly_sized(tmp_path):
    bench = load_bench()
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    assert bench.build_local_text(a, 1_500_000) == 1_500_000
    bench.build_local_text(b, 1_500_000)
    assert a.read_bytes() == b.read_bytes() and a.stat().st_size == 1_500_000


def test_unreachable_enwik8_falls_back_to_local_text_and_says_so(tmp_path, monkeypatch, capsys):
    bench = load_bench()
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AUTORESEARCH_ENWIK8_URL", "http://127.0.0.1:9/enwik8.zip")   # nothing listens
    monkeypatch.setattr(enwik8, "DOWNLOAD_BACKOFF_S", 0.0)
    description = bench.ensure_data(None, local_bytes=1_200_000)
    assert description.startswith("NOT enwik8: local bytes, 1,200,000 bytes")
    assert "cannot be had here" in capsys.readouterr().out
    assert len(enwik8.load_split("val")) == 60_000
    assert bench.ensure_data(None, local_bytes=1_200_000) == description   # prepared once, reused
