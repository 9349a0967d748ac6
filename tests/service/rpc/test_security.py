"""TLS, mutual TLS and bearer tokens, with certificates the test makes itself."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._proto.triage.v1 import triage_pb2_grpc
from tests.helpers.dicom_factory import chest
from tests.helpers.pki import Pki, make_pki
from tests.helpers.servers import ServerFactory, open_stub
from triage_tools.client import CallOptions, ChannelOptions, open_channel, triage_study


@pytest.fixture(name="pki", scope="module")
def fixture_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with a server certificate (localhost, 127.0.0.1) and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls(server_factory: ServerFactory, pki: Pki) -> None:
    """With TLS on, a client trusting the CA is served and a plaintext client is not."""
    _, port = server_factory(
        **{"security.tls_cert": str(pki.server_cert), "security.tls_key": str(pki.server_key)}
    )
    channel = open_channel(ChannelOptions(f"localhost:{port}", tls_ca=pki.ca))
    result = triage_study(triage_pb2_grpc.TriageStub(channel), [chest()], CallOptions(timeout=30))
    assert result.model_version
    channel.close()
    plain, stub = open_stub(port)
    with pytest.raises(grpc.RpcError) as info:
        triage_study(stub, [chest()], CallOptions(timeout=5))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    plain.close()


def test_mutual_tls(server_factory: ServerFactory, pki: Pki) -> None:
    """With mutual TLS, only a client presenting a certificate from the CA is served."""
    _, port = server_factory(
        **{
            "security.tls_cert": str(pki.server_cert),
            "security.tls_key": str(pki.server_key),
            "security.tls_client_ca": str(pki.ca),
        }
    )
    anonymous = open_channel(ChannelOptions(f"localhost:{port}", tls_ca=pki.ca))
    with pytest.raises(grpc.RpcError) as info:
        triage_study(triage_pb2_grpc.TriageStub(anonymous), [chest()], CallOptions(timeout=5))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    anonymous.close()
    options = ChannelOptions(
        f"localhost:{port}", tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key
    )
    channel = open_channel(options)
    result = triage_study(triage_pb2_grpc.TriageStub(channel), [chest()], CallOptions(timeout=30))
    assert result.model_version
    channel.close()


def test_bearer_token(server_factory: ServerFactory, tmp_path: Path) -> None:
    """Calls without a valid token get UNAUTHENTICATED; health stays open by default."""
    tokens = tmp_path / "tokens"
    tokens.write_text("# one per line\nsecond-token\n")
    _, port = server_factory(
        **{"security.tokens": "first-token", "security.tokens_file": str(tokens)}
    )
    channel, stub = open_stub(port)
    for token in (None, "wrong", "first-token-x"):
        with pytest.raises(grpc.RpcError) as info:
            triage_study(stub, [chest()], CallOptions(token=token))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for token in ("first-token", "second-token"):
        assert triage_study(stub, [chest()], CallOptions(token=token)).model_version
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_bearer_token_on_health(server_factory: ServerFactory) -> None:
    """With security.auth_health on, health checks need the token too."""
    _, port = server_factory(**{"security.tokens": "t0k", "security.auth_health": True})
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = health.Check(
        health_pb2.HealthCheckRequest(service=""),
        timeout=5,
        metadata=(("authorization", "Bearer t0k"),),
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()
