"""``inference.backend = "kserve"`` against a real Triton Inference Server process.

Triton is PyPI's nvidia-pytriton (tritonserver 2.51, Python backend) in its own virtual
environment (:mod:`triage_tools.triton_local`), serving the test bundle's ONNX graph under ONNX
Runtime inside a bound Python function; the service talks to it over KServe v2 gRPC on
loopback. The tests skip, loudly, only when that environment cannot be installed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from service._proto.triage.v1 import triage_pb2
from service.rpc.server import TriageServer, create_server
from tests.helpers import dicom_factory
from tests.helpers.pki import make_pki
from tests.helpers.servers import make_config, open_stub
from tests.helpers.triton import pytriton_python, wait_for_status
from triage_tools.triton_local import TritonProcess

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: Probabilities, P(error) and OOD scores of the two paths agree to this (float32 graph, same
#: ONNX Runtime CPU kernels on both sides; only the batch composition can differ).
TOLERANCE = 1e-5


@pytest.fixture(name="triton_python", scope="module")
def fixture_triton_python() -> Path:
    """The PyTriton environment's python (created once and cached), or a loud skip."""
    return pytriton_python()


@pytest.fixture(name="triton", scope="module")
def fixture_triton(triton_python: Path, bundle_path: Path) -> Iterator[TritonProcess]:
    """A Triton server serving the test bundle, shared by the module's read-only tests."""
    server = TritonProcess(triton_python, bundle_path)
    try:
        server.wait_ready(120)
        yield server
    finally:
        server.stop()


def _kserve(address: str, **dotted: Any) -> dict[str, Any]:
    return {
        "inference.backend": "kserve",
        "inference.kserve_address": address,
        "inference.kserve_health_seconds": 0.2,
        "inference.kserve_timeout_seconds": 5.0,
        **dotted,
    }


def _start(bundle: Path, **dotted: Any) -> tuple[TriageServer, int]:
    server, port = create_server(make_config(bundle, **dotted))
    server.start(wait_ready=True, timeout=60)
    return server, port


def _studies() -> list[bytes]:
    """Distinct studies: RG1 at three sizes and other pydicom-data images relabelled as chest."""
    studies = [dicom_factory.chest(factor=f) for f in (2, 4, 8)]
    for name in ("CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm", "RG3_UNCR.dcm"):
        studies.append(dicom_factory.as_chest(dicom_factory.file_bytes(name)))
    return studies


def _triage(port: int, studies: list[bytes]) -> list[triage_pb2.TriageResult]:
    channel, stub = open_stub(port)
    try:
        return [stub.Triage(triage_pb2.TriageRequest(instances=[s]), timeout=30) for s in studies]
    finally:
        channel.close()


def test_same_studies_same_decisions_through_triton(
    triton: TritonProcess, bundle_path: Path
) -> None:
    """Every study gets the same decision, probabilities, P(error) and OOD score both ways."""
    studies = _studies()
    local, local_port = _start(bundle_path)
    remote, remote_port = _start(bundle_path, **_kserve(triton.address))
    try:
        assert remote.providers == [f"kserve:{triton.address}/cxr_triage"]
        expected = _triage(local_port, studies)
        got = _triage(remote_port, studies)
    finally:
        local.stop(0).wait(10)
        remote.stop(0).wait(10)
    assert len({r.p_error for r in expected}) > 1  # the studies really differ
    for a, b in zip(expected, got, strict=True):
        assert b.decision == a.decision and list(b.defer_reasons) == list(a.defer_reasons)
        assert b.model_version == a.model_version
        assert [f.label for f in b.findings] == [f.label for f in a.findings]
        assert [f.present for f in b.findings] == [f.present for f in a.findings]
        np.testing.assert_allclose(
            [f.probability for f in b.findings], [f.probability for f in a.findings],
            atol=TOLERANCE, rtol=0,
        )  # fmt: skip
        np.testing.assert_allclose(b.p_error, a.p_error, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(b.ood_score, a.ood_score, rtol=TOLERANCE, atol=TOLERANCE)


def test_metadata_mismatch_is_refused_naming_the_differences(
    triton_python: Path, bundle_path: Path
) -> None:
    """A Triton model whose output name and input dims differ from the bundle stops start-up."""
    extra = ["--rename", "p_error=p_err", "--dims", "image=1,32,32"]
    with TritonProcess(triton_python, bundle_path, extra=extra) as other:
        other.wait_ready(120)
        server, _ = create_server(make_config(bundle_path, **_kserve(other.address)))
        start = time.monotonic()
        try:
            with pytest.raises(RuntimeError) as info:
                server.start(wait_ready=True, timeout=30)
        finally:
            server.stop(0).wait(10)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert f"KServe model 'cxr_triage' at {other.address} does not match bundle" in message
    assert "output 'p_error' is missing" in message
    assert "input 'image' has shape [batch, 1, 32, 32] on the server" in message


def test_killed_triton_means_not_serving_and_unavailable_then_recovery(
    triton_python: Path, bundle_path: Path
) -> None:
    """SIGKILL of Triton: readiness NOT_SERVING, calls UNAVAILABLE within their deadline,
    liveness SERVING; Triton back on the same port: SERVING and the same result again."""
    study = dicom_factory.chest(factor=4)
    first = TritonProcess(triton_python, bundle_path)
    first.wait_ready(120)
    server, port = _start(bundle_path, **_kserve(first.address))
    second: TritonProcess | None = None
    try:
        (before,) = _triage(port, [study])
        first.kill()
        went_down = wait_for_status(port, "readiness", NOT_SERVING, timeout=10)
        assert went_down < 3  # polled every 0.2 s
        assert wait_for_status(port, "liveness", SERVING, timeout=1) == pytest.approx(0, abs=1)
        channel, stub = open_stub(port)
        deadline = 3.0
        for _ in range(3):
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.Triage(triage_pb2.TriageRequest(instances=[study]), timeout=deadline)
            assert time.monotonic() - t0 < deadline
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
            assert "unavailable" in info.value.details() or "not ready" in info.value.details()
        channel.close()
        second = TritonProcess(triton_python, bundle_path, grpc_port=first.grpc_port)
        second.wait_ready(120)
        came_back = wait_for_status(port, "readiness", SERVING, timeout=15)
        (after,) = _triage(port, [study])
    finally:
        server.stop(0).wait(10)
        first.stop()
        if second is not None:
            second.stop()
    assert came_back < 10
    assert after.decision == before.decision
    np.testing.assert_allclose(after.p_error, before.p_error, atol=TOLERANCE, rtol=0)


def test_mutual_tls_to_triton(triton_python: Path, bundle_path: Path, tmp_path: Path) -> None:
    """Triton requiring client certificates serves a replica that presents one; a replica
    without one never becomes ready and gives up naming the server as unavailable."""
    pki = make_pki(tmp_path)
    tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    with TritonProcess(
        triton_python, bundle_path, extra=[*tls, "--tls-client-ca", str(pki.ca)]
    ) as secure:
        credentials = grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
        )
        secure.wait_ready(120, credentials=credentials)
        address = f"localhost:{secure.grpc_port}"
        trusted = {
            "inference.kserve_tls": True,
            "inference.kserve_tls_ca": str(pki.ca),
            "inference.kserve_tls_cert": str(pki.client_cert),
            "inference.kserve_tls_key": str(pki.client_key),
        }
        server, port = _start(bundle_path, **_kserve(address, **trusted))
        try:
            (result,) = _triage(port, [dicom_factory.chest(factor=4)])
        finally:
            server.stop(0).wait(10)
        assert result.model_version
        anonymous = {
            "inference.kserve_tls": True,
            "inference.kserve_tls_ca": str(pki.ca),
            "inference.kserve_startup_seconds": 1.0,
        }
        server, _ = create_server(make_config(bundle_path, **_kserve(address, **anonymous)))
        try:
            with pytest.raises(RuntimeError) as info:
                server.start(wait_ready=True, timeout=30)
        finally:
            server.stop(0).wait(10)
    assert f"KServe model 'cxr_triage' at {address} is unavailable" in str(info.value)
    assert "gave up after 1 s" in str(info.value)


def test_hung_triton_fails_calls_within_the_deadline_and_recovers(
    triton_python: Path, bundle_path: Path
) -> None:
    """SIGSTOP of Triton (connections open, no answers): readiness NOT_SERVING within a poll
    timeout, calls UNAVAILABLE well inside their deadline; SIGCONT brings SERVING back."""
    study = dicom_factory.chest(factor=4)
    with TritonProcess(triton_python, bundle_path) as hung:
        hung.wait_ready(120)
        server, port = _start(bundle_path, **_kserve(hung.address))
        try:
            _triage(port, [study])
            hung.freeze()
            assert wait_for_status(port, "readiness", NOT_SERVING, timeout=10) < 3
            channel, stub = open_stub(port)
            for _ in range(3):
                t0 = time.monotonic()
                with pytest.raises(grpc.RpcError) as info:
                    stub.Triage(triage_pb2.TriageRequest(instances=[study]), timeout=4.0)
                assert time.monotonic() - t0 < 2.0  # one 0.2 s readiness poll, not the 5 s timeout
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
            channel.close()
            hung.thaw()
            assert wait_for_status(port, "readiness", SERVING, timeout=15) < 10
            (after,) = _triage(port, [study])
        finally:
            hung.thaw()
            server.stop(0).wait(10)
    assert after.model_version
