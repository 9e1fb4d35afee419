"""cluster.yaml (and the on-prem example in docs/orchestrator.md) against Ray's own schema."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def prepared(config: dict) -> dict:
    """What `ray up` checks: Ray's defaults merged in, then the ray-schema.json that ships with ray."""
    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


def test_cluster_yaml_is_valid_for_the_installed_ray():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config = prepared(raw)
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert not re.match(r"^(g|p)\d", head["node_config"]["InstanceType"])  # a CPU head
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert len(workers) == 1
    (gpu,) = workers.values()
    assert re.match(r"^(g|p)\d", gpu["node_config"]["InstanceType"])  # GPU instances
    assert "min_workers" in raw["available_node_types"][next(iter(workers))]
    assert gpu["max_workers"] >= 1


def test_cluster_yaml_installs_the_project_and_keeps_ports_private():
    import ray

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    mounts = raw["file_mounts"]
    source = next(k for k, v in mounts.items() if v == ".")
    assert (ROOT / "sweeps").is_dir()  # the mounted project root brings sweeps/
    setup = " ".join(raw["setup_commands"])
    assert f"ray[default,tune]=={ray.__version__}" in setup  # Ray pinned to the client's version
    assert f"-e {source}" in setup
    for pkg in ("torch==", "pyarrow==", "polars==", "optuna==", "pydantic=="):
        assert pkg in setup
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    rules = raw["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]  # SSH only
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in " ".join(raw["worker_start_ray_commands"])


def test_on_prem_example_in_the_docs_is_valid():
    text = (ROOT / "docs" / "orchestrator.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    local = [yaml.safe_load(b) for b in blocks if "type: local" in b]
    assert local, "docs/orchestrator.md should show an on-prem (local provider) cluster config"
    config = prepared(local[0])
    assert config["provider"]["type"] == "local"
    assert config["provider"]["worker_ips"]
