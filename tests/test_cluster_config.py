"""ray_cluster.yaml passes Ray's own cluster-config validation and keeps the promises in its comments."""
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_validates_with_rays_schema(config):
    validate_config(prepare_config(config))


def test_schema_rejects_a_broken_copy(config):
    broken = prepare_config(config)
    broken["available_node_types"]["head"]["resources"] = "lots"
    with pytest.raises(Exception):
        validate_config(broken)


def test_head_runs_no_trials(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert any("--num-cpus=0" in c for c in config["head_start_ray_commands"])


def test_ray_pinned_to_the_projects_version(config):
    pyproject = (ROOT / "pyproject.toml").read_text()
    pin = next(line.split('"')[1] for line in pyproject.splitlines() if line.strip().startswith('"ray=='))
    version = pin.split("==")[1]
    assert any(f"ray[default]=={version}" in c for c in config["setup_commands"])


def test_every_gpu_node_prepares_its_own_cache(config):
    assert any("python3 -m prepare" in c for c in config["worker_setup_commands"])
    gpu_types = [name for name in config["available_node_types"] if name != config["head_node_type"]]
    assert gpu_types, "at least one GPU node type"
