"""cluster.yaml (AWS) and cluster-onprem.yaml (local provider) against Ray's own schema, and the fixes
that make `ray up` work for real (tests/cluster/test_ray_up.py runs cluster-onprem.yaml on two nodes)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


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


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_onprem_yaml_is_valid_for_the_installed_ray():
    raw = load("cluster-onprem.yaml")
    config = prepared(raw)
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    assert config["auth"]["ssh_user"] and config["auth"]["ssh_private_key"]


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-onprem.yaml"])
def test_every_node_gets_the_token_owner_only_and_the_clients_ray(name):
    import ray

    raw = load(name)
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "chmod 600 ~/.ray/auth_token" in raw["setup_commands"]
    setup = " ".join(raw["setup_commands"])
    assert re.search(rf"ray\[[a-z,]*tune[a-z,]*\]=={re.escape(ray.__version__)}", setup)
    assert "-e ~/qk-collapse-sweep" in setup
    head, workers = " ".join(raw["head_start_ray_commands"]), " ".join(raw["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    assert "--dashboard-host=127.0.0.1" in head
    header = (ROOT / name).read_text().split("\ncluster_name:")[0]
    assert "ray get-auth-token --generate && chmod 600 ~/.ray/auth_token" in header


def test_onprem_yaml_has_the_fixes_found_on_two_real_nodes():
    raw = load("cluster-onprem.yaml")
    head, workers = " ".join(raw["head_start_ray_commands"]), " ".join(raw["worker_start_ray_commands"])
    assert "--node-ip-address=" in head and "--node-ip-address=" in workers  # no route: Ray binds 127.0.0.1
    assert "RAY_enable_autoscaler_v2=0" in head  # v2 never starts local-provider workers (ray#59905)
    assert "--no-build-isolation" in raw["setup_commands"][-1]  # offline installs
    assert workers.rstrip().endswith("&") and "ray stop" in raw["worker_start_ray_commands"][-1]
    assert raw["worker_start_ray_commands"][0] == "ray stop"


def test_cluster_docs_show_the_token_step_and_link_the_files():
    text = (ROOT / "docs" / "cluster.md").read_text()
    assert "ray get-auth-token --generate" in text and "chmod 600 ~/.ray/auth_token" in text
    assert "cluster-onprem.yaml" in text and "cluster.yaml" in text
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        if "provider:" in block and "type:" in block:
            prepared(yaml.safe_load(block))
    assert "cluster.md" in (ROOT / "docs" / "orchestrator.md").read_text()
