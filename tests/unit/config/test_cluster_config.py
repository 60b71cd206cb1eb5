"""cluster.yaml against Ray's own cluster-config schema, offline, and its security defaults."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CLUSTER = ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_ray_schema(raw):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(raw)
    validate_config(cfg)
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_groups_give_a100s_and_autoscaling_cpus(raw):
    types = raw["available_node_types"]
    gpu = [t for t in types.values() if t["node_config"]["InstanceType"].startswith("p4d.")]
    assert len(gpu) == 1 and gpu[0]["max_workers"] >= 1      # 8x A100 40 GB; train uses 4 (or 8)
    cpu = types["cpu_workers"]
    assert cpu["min_workers"] == 0 and cpu["max_workers"] > cpu["min_workers"]


def test_dashboard_local_token_auth_and_no_keys(raw):
    text = CLUSTER.read_text()
    starts = [c for c in raw["head_start_ray_commands"] if "ray start" in c]
    assert starts and all("--dashboard-host=127.0.0.1" in c for c in starts)
    for cmd in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]:
        assert "RAY_AUTH_MODE=token" in cmd
    assert "0.0.0.0" not in text
    # credentials come from the instance profile: no key material in the file
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|AWS_SECRET_ACCESS_KEY", text)
    for node in raw["available_node_types"].values():
        assert node["node_config"]["IamInstanceProfile"]["Name"]


@pytest.mark.slow
def test_aws_bootstrap_offline(raw, tmp_path, monkeypatch):
    """Ray's whole AWS bootstrap against moto's fake AWS: instance types resolve to real resources."""
    moto = pytest.importorskip("moto")
    monkeypatch.setenv("HOME", str(tmp_path))        # the bootstrap writes an SSH key into ~/.ssh
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    from ray.autoscaler._private.commands import _bootstrap_config
    from ray.autoscaler._private.util import prepare_config

    with moto.mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        import boto3

        boto3.client("iam").create_instance_profile(InstanceProfileName="alle-dist-node")
        cfg = _bootstrap_config(prepare_config(raw), no_config_cache=True)
    res = {k: v["resources"] for k, v in cfg["available_node_types"].items()}
    assert res["gpu_a100"]["GPU"] == 8 and res["gpu_a100"].get("accelerator_type:A100") == 1
    assert res["cpu_workers"]["CPU"] == 32
