"""The Kubernetes manifests under deploy/kubernetes: valid against the Kubernetes API schemas,
and wired to what the image and the service really have (probes, config keys, selectors).

The schemas are those ``kubernetes-validate`` ships inside its package (no download), in its
strict variant: an unknown or misspelt field is an error, as ``kubectl apply --validate=strict``
would make it.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.apps import probe
from service.config import env_name, key_types, load_config

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
#: The oldest Kubernetes minor these manifests are written for (autoscaling/v2, policy/v1,
#: appProtocol and the probes' fields are all older).
KUBERNETES = "1.29"
#: Keys the manifests set that the service does not have yet (none: ``worklist.url``, the
#: PostgreSQL worklist from its Secret, is a configuration key now).
PENDING_KEYS: set[str] = set()


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for _, d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


@pytest.mark.parametrize(
    ("source", "doc"), _documents(), ids=lambda v: v if isinstance(v, str) else v["kind"]
)
def test_manifest_is_valid_against_the_kubernetes_schema(source: str, doc: dict[str, Any]) -> None:
    """Every document validates against its kind's strict schema of Kubernetes 1.29."""
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    assert (
        doc["metadata"].get("namespace", "cxr-triage") == "cxr-triage" or doc["kind"] == "Namespace"
    )


def test_the_validator_refuses_a_misspelt_field() -> None:
    """The schema check can fail: a typo in a probe and a string replica count are refused."""
    deployment = _one("Deployment", "cxr-triage")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecond"):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_probes_run_the_images_triage_probe_on_the_health_services() -> None:
    """Liveness, readiness and start-up are exec probes of ``triage-probe`` with flags it
    accepts, asking the services the server sets (TLS: native gRPC probes cannot)."""
    container = _container(_one("Deployment", "cxr-triage"))
    parser = argparse.ArgumentParser()
    probe.configure(parser)
    services = {}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = container[kind]["exec"]["command"]
        assert command[0] == "triage-probe"
        args = parser.parse_args(command[1:])
        assert args.server == f"localhost:{container['ports'][0]['containerPort']}"
        assert args.timeout < container[kind]["timeoutSeconds"]
        assert args.tls_ca is not None
        services[kind] = args.service
    assert services == {
        "startupProbe": "liveness",
        "livenessProbe": "liveness",
        "readinessProbe": "readiness",
    }


def test_config_file_and_environment_name_real_keys(bundle_path: Path, tmp_path: Path) -> None:
    """The ConfigMap's triage.toml loads as a valid configuration (kserve backend), and every
    TRIAGE_* variable of the Deployment is a configuration key (or the pending worklist.url)."""
    config_map = _one("ConfigMap", "cxr-triage-config")
    text = config_map["data"]["triage.toml"]
    (tmp_path / "triage.toml").write_text(text)
    config = load_config(tmp_path / "triage.toml", env={}, overrides={"bundle": str(bundle_path)})
    assert config.inference.backend == "kserve"
    assert config.inference.kserve_address.endswith(":8001")
    assert tomllib.loads(text)["server"]["port"] == 50051
    container = _container(_one("Deployment", "cxr-triage"))
    known = {env_name(key) for key in key_types()}
    names = {e["name"] for e in container["env"] if e["name"].startswith("TRIAGE_")}
    assert names - known == PENDING_KEYS
    assert container["args"] == ["--config", "/etc/triage/triage.toml"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/etc/triage/triage.toml" in mounts


def test_worklist_url_comes_from_a_secret() -> None:
    """The PostgreSQL connection string (with its password) is a Secret reference, not a value."""
    container = _container(_one("Deployment", "cxr-triage"))
    (url,) = [e for e in container["env"] if e["name"] == "TRIAGE_WORKLIST__URL"]
    assert "value" not in url
    assert url["valueFrom"]["secretKeyRef"] == {"name": "cxr-triage-worklist", "key": "url"}


def test_replicas_resources_disruption_budget_and_autoscaler_fit_together() -> None:
    """Several replicas with requests and a memory limit; the PDB and the Services select the
    Deployment's pods, the HPA scales it on the queue gauge the metrics endpoint exports, and
    Kubernetes waits out the drain before SIGKILL."""
    deployment = _one("Deployment", "cxr-triage")
    spec = deployment["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] >= 2
    container = _container(deployment)
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    pdb = _one("PodDisruptionBudget", "cxr-triage")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < spec["replicas"]
    for name in ("cxr-triage", "cxr-triage-headless"):
        assert _one("Service", name)["spec"]["selector"].items() <= pod_labels.items()
    hpa = _one("HorizontalPodAutoscaler", "cxr-triage")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= pdb["spec"]["minAvailable"] + 1
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    from service.rpc.metrics import Metrics

    exported = {m.name for m in Metrics(enabled=True).registry.collect()}
    assert metric in exported
    grace = load_config(None, env={}, overrides={"bundle": "x"}).server.shutdown_grace_seconds
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def test_the_services_point_at_triton_the_way_the_config_says() -> None:
    """The kserve address of the ConfigMap is the Triton Service's gRPC port."""
    text = _one("ConfigMap", "cxr-triage-config")["data"]["triage.toml"]
    address = tomllib.loads(text)["inference"]["kserve_address"]
    host, port = address.rsplit(":", 1)
    triton = _one("Service", "triton")
    assert host.split(".")[:2] == [triton["metadata"]["name"], triton["metadata"]["namespace"]]
    grpc_port = next(p for p in triton["spec"]["ports"] if p["name"] == "grpc")
    assert int(port) == grpc_port["port"]
