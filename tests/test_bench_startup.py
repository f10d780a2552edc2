"""bench/engine_variants.py (its variants still apply to the train file), bench/concurrent_start.py
(side-by-side smoke trainings on a CPU, in a shell's and in a population worker's environment) and
bench/cache_key_diff.py (which compile-cache key component differs between two logs)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
TRAIN_FILE = BENCH.parent / "engine" / "train.py"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def variants():
    return load("engine_variants")


def test_every_variant_still_applies_to_the_train_file_and_changes_it(variants):
    source = TRAIN_FILE.read_text()
    for name in variants.VARIANTS:
        text = variants.variant_text(source, name)
        compile(text, f"{name}.py", "exec")
        assert (text == source) == (name == "base"), name


def test_a_variant_that_no_longer_matches_is_an_error(variants):
    with pytest.raises(ValueError, match="qkv_cat"):
        variants.variant_text("print('not the train file')\n", "qkv_cat")


def test_profile_output_is_parsed_or_reported_missing(variants):
    out = "x.py: attention flex, warm-up 54.3 s (3 steps, compile included)\n" \
          "step ms: p10 337.3  median 339.2  p90 343.4  (20 steps, NVIDIA H100 80GB HBM3)\n"
    assert variants.parse_profile_output(out) == {"p10": 337.3, "median": 339.2, "p90": 343.4, "warmup_s": 54.3}
    assert variants.parse_profile_output("Traceback (most recent call last):\n") is None


@pytest.mark.parametrize("population_env", [False, True])
def test_side_by_side_smoke_trainings_report_what_each_spent_outside_the_budget(
        prepared_cache, tmp_path, capsys, population_env):
    concurrent_start = load("concurrent_start")
    out = tmp_path / "start.jsonl"
    argv = ["--cpu", "--gpus", "2", "--budget", "1", "--json", str(out), "--label", "smoke"]
    code = concurrent_start.main(argv + (["--population-env"] if population_env else []))
    printed = capsys.readouterr().out
    assert code == 0, printed
    record = json.loads(out.read_text())
    assert record["label"] == "smoke" and len(record["runs"]) == 2
    for run in record["runs"]:
        assert run["exit"] == 0
        assert run["training_seconds"] >= 1.0
        assert run["outside_seconds"] == pytest.approx(run["total_seconds"] - run["training_seconds"], abs=0.11)
        assert run["startup_seconds"] > 0 and run["eval_seconds"] > 0 and run["cpu_seconds"] > 0
    assert ("population environment: leaves out" in printed) == population_env


def test_bad_env_pair_is_one_clear_error():
    concurrent_start = load("concurrent_start")
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        concurrent_start.parse_env(["JUSTANAME"])


def test_script_help_runs():
    import subprocess
    result = subprocess.run([sys.executable, str(BENCH / "concurrent_start.py"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--population-env" in result.stdout


def _key_log(cxx: str, graph_input: str) -> str:
    """Two graphs' cache keys as inductor logs them with TORCH_LOGS (a multi-line value included)."""
    prefix = "V1121 23:20:44.968000 1097 torch/_functorch/_aot_autograd/autograd_cache.py:632] [{}] "
    def key(compile_id, header, components):
        lines = [prefix.format(compile_id) + f"{header} for key a{'k' * 51}:"]
        for name, value in components:
            digest = hashlib.sha1(value.encode()).hexdigest()
            lines.append(prefix.format(compile_id) + f"[{digest}] {name}: {value}")
        lines.append(prefix.format(compile_id) + "    forward = GraphModule()")  # a value's next line
        return lines
    settings = [("grad_enabled", "True"), ("inductor_config[cpp.cxx]", f"(None, '{cxx}')")]
    return "\n".join(["step 00000 | loss: 9.0",
                      *key("0/0", "Autograd graph cache hash details", [*settings, ("example_inputs[0]", graph_input)]),
                      *key("0/0", "FX graph cache hash details", settings),
                      *key("1/0", "Autograd graph cache hash details", [*settings, ("example_inputs[0]", "other")])])


def test_cache_key_diff_names_the_component_that_differs(tmp_path, capsys):
    cache_key_diff = load("cache_key_diff")
    warm, missed = tmp_path / "warm.log", tmp_path / "missed.log"
    warm.write_text(_key_log("/opt/gcc/bin/g++", "x[8, 2048]"))
    missed.write_text(_key_log("g++", "x[8, 2048]"))
    assert cache_key_diff.main([str(warm), str(missed)]) == 0
    out = capsys.readouterr().out
    assert "aot: 3 components, 1 differ" in out and "fx: 2 components, 1 differ" in out
    assert f"{warm}: (None, '/opt/gcc/bin/g++')" in out and f"{missed}: (None, 'g++')" in out
    assert "example_inputs" not in out                  # only the first graph's key is compared

    same = tmp_path / "same.log"
    same.write_text(_key_log("/opt/gcc/bin/g++", "x[8, 2048]"))
    assert cache_key_diff.main([str(warm), str(same)]) == 0
    assert "aot: 3 components, 0 differ" in capsys.readouterr().out

    plain = tmp_path / "plain.log"
    plain.write_text("step 00000 | loss: 9.0\n")        # TORCH_LOGS was not set: nothing to compare
    assert cache_key_diff.main([str(warm), str(plain)]) == 1
