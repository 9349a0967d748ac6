"""Per-site production monitoring: deferral, OOD and P(error) drift as Prometheus metrics."""

from __future__ import annotations

import dataclasses
import socket
import urllib.request
from pathlib import Path

import numpy as np

from service.bundle import load_bundle
from service.rpc.metrics import Metrics
from tests.helpers.dicom_factory import chest
from tests.helpers.policies import make_policy
from tests.helpers.servers import ServerFactory, open_stub
from triage_common.monitoring import MIN_WINDOW
from triage_common.policy_format import MonitoringReference, p_error_histogram, write_policy
from triage_tools.client import CallOptions, triage_study


def _reference(sites: dict[str, float]) -> MonitoringReference:
    """A reference whose P(error) sits around each site's given value."""
    rng = np.random.default_rng(0)
    groups = {"all": 0.3, **sites}
    return MonitoringReference(
        defer_cost=0.3,
        studies=dict.fromkeys(groups, 500),
        deferral_rate=dict.fromkeys(groups, 0.4),
        ood_rate=dict.fromkeys(groups, 0.02),
        p_error_histogram={
            g: p_error_histogram(np.clip(rng.normal(m, 0.05, 500), 0, 1)) for g, m in groups.items()
        },
    )


def _samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_drift_of_a_site_shows_once_its_window_is_full() -> None:
    """A site whose P(error) moved gets a large PSI, a site like its calibration a small one,
    both only after MIN_WINDOW studies; unknown sites count as `other` against `all`."""
    metrics = Metrics(enabled=True)
    reference = _reference({"Site A": 0.3, "Site B": 0.3})
    rng = np.random.default_rng(1)
    for i in range(MIN_WINDOW):
        metrics.observe_result(
            "Site A", "DEFER", i % 10 == 0, float(rng.normal(0.3, 0.05)), reference
        )
        metrics.observe_result(
            "Site B", "AUTO_REPORT", False, float(rng.normal(0.6, 0.05)), reference
        )
        if i == MIN_WINDOW - 2:
            assert not _samples(metrics, "triage_p_error_psi")  # not yet reported
    metrics.observe_result("Mystery Hospital", "DEFER", True, 0.3, reference)
    psi = _samples(metrics, "triage_p_error_psi")
    assert psi[(("site", "Site A"),)] < 0.1 < 0.25 < psi[(("site", "Site B"),)]
    results = _samples(metrics, "triage_site_results_total")
    assert results[(("decision", "DEFER"), ("site", "Site A"))] == MIN_WINDOW
    assert results[(("decision", "DEFER"), ("site", "other"))] == 1
    ood = _samples(metrics, "triage_site_ood_total")
    assert ood[(("site", "Site A"),)] == MIN_WINDOW // 10 and ood[(("site", "other"),)] == 1
    expected = _samples(metrics, "triage_expected_deferral_rate")
    assert expected[(("site", "Site B"),)] == 0.4 and (("site", "other"),) in expected


def test_without_a_calibrated_policy_everything_counts_as_all() -> None:
    """Without a reference the site label is `all` (no raw header value becomes a label) and
    no drift is computed."""
    metrics = Metrics(enabled=True)
    metrics.observe_result("Some Hospital^Ward 3", "DEFER", False, 0.4, None)
    assert _samples(metrics, "triage_site_results_total") == {
        (("decision", "DEFER"), ("site", "all")): 1.0
    }
    assert not _samples(metrics, "triage_p_error_psi")


def test_the_server_exports_per_site_metrics_from_its_policy(
    server_factory: ServerFactory, bundle_path: Path, tmp_path: Path
) -> None:
    """A real server with a calibrated policy counts its results under the policy's site names
    (the service reads InstitutionName upper-cased; the match ignores case) and exports the
    expected rates the alert rules compare with."""
    bundle = load_bundle(bundle_path)
    policy = dataclasses.replace(
        make_policy(bundle.bundle_id, cost=0.3), monitoring=_reference({"Test Site": 0.3})
    )
    path = tmp_path / "policy.json"
    write_policy(path, policy)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    server, port = server_factory(**{"metrics.port": metrics_port, "policy.file": str(path)})
    channel, stub = open_stub(port)
    for _ in range(2):
        triage_study(stub, [chest(InstitutionName="Test Site")], CallOptions())
    triage_study(stub, [chest(InstitutionName="Elsewhere")], CallOptions())
    channel.close()
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
        .read()
        .decode()
    )
    lines = [line for line in body.splitlines() if line.startswith("triage_site_results_total")]
    assert sum(float(x.rsplit(" ", 1)[1]) for x in lines if 'site="Test Site"' in x) == 2
    assert sum(float(x.rsplit(" ", 1)[1]) for x in lines if 'site="other"' in x) == 1
    assert 'triage_expected_deferral_rate{site="Test Site"} 0.4' in body
    assert "Elsewhere" not in body
