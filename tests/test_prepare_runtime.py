"""prepare/runtime.py: the train file's plumbing (environment parsing, device facts, the summary)."""
from __future__ import annotations

import math

import pytest

from population.summary import parse_summary
from prepare import runtime


@pytest.mark.parametrize("name, flops", [
    ("NVIDIA H100 80GB HBM3", 989.5e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989.5e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362.05e12),
    ("NVIDIA GeForce RTX 4090", 165.2e12), ("NVIDIA A10G", 70e12),
])
def test_peak_flops_by_device_name(name, flops):
    assert runtime.peak_flops(name) == flops


def test_unknown_device_has_nan_peak():
    assert math.isnan(runtime.peak_flops("Tesla T4")) and math.isnan(runtime.peak_flops("cpu"))


def test_eval_batch_size_divides_the_rows():
    assert runtime.eval_batch_size(256, eval_tokens=40 * 524288, seq_len=2048) == 256
    assert runtime.eval_batch_size(256, eval_tokens=32768, seq_len=256) == 128
    assert runtime.eval_batch_size(32, eval_tokens=100 * 256, seq_len=256) == 25


def test_environment_parsing(monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_FAULT", "nan_at_step:7")
    assert runtime.fault_step() == 7
    monkeypatch.setenv("AUTORESEARCH_FAULT", "explode")
    with pytest.raises(runtime.ConfigError, match="AUTORESEARCH_FAULT"):
        runtime.fault_step()
    monkeypatch.setenv("AUTORESEARCH_SEED", "forty-two")
    with pytest.raises(runtime.ConfigError, match="AUTORESEARCH_SEED"):
        runtime.env_int("AUTORESEARCH_SEED", 42)
    monkeypatch.delenv("AUTORESEARCH_SEED")
    assert runtime.env_int("AUTORESEARCH_SEED", 42) == 42
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "tpu")
    with pytest.raises(runtime.ConfigError, match="use cuda or cpu"):
        runtime.select_device(smoke=True)
    monkeypatch.delenv("AUTORESEARCH_DEVICE")
    assert runtime.select_device(smoke=True) == "cpu"


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 11)]
    assert (runtime.percentile(values, 10), runtime.percentile(values, 50), runtime.percentile(values, 90)) == (1, 5, 9)
    assert math.isnan(runtime.percentile([], 50))


def test_summary_block_parses_as_the_driver_reads_it():
    facts = dict(training_seconds=2.0, step_times=[0.1] * 20, num_steps=31, untimed_steps=11,
                 tokens_per_step=2048, flops_per_token=1e6, peak_flops=1e12, num_params=294_980, depth=2,
                 attention="sdpa", device_type="cpu", process_start=0.0, loop_start=3.0, compile_seconds=0.2,
                 eval_seconds=0.0)
    parsed = parse_summary("step 00030 | loss: 4.3\n" + runtime.summary(val_bpb=None, **facts))
    assert "val_bpb" not in parsed                         # under the harness the file prints none
    assert parsed["num_steps"] == 31 and parsed["depth"] == 2 and parsed["peak_vram_mb"] == 0.0
    assert parsed["mfu_percent"] == pytest.approx(100 * 1e6 * 2048 * 20 / 2.0 / 1e12, abs=0.01)
    assert parsed["total_tokens_M"] == pytest.approx(31 * 2048 / 1e6, abs=0.05)
    assert parsed["step_ms_p50"] == 100.0 and parsed["startup_seconds"] == 3.0
    assert parse_summary(runtime.summary(val_bpb=1.234567, **facts))["val_bpb"] == 1.234567
