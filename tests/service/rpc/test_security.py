"""TLS, mutual TLS and bearer tokens, with certificates the test makes itself."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._proto.triage.v1 import triage_pb2_grpc
from tests.helpers.dicom_factory import chest
from tests.helpers.servers import ServerFactory, open_stub
from triage_tools.client import CallOptions, ChannelOptions, open_channel, triage_study


@dataclass(frozen=True)
class Pki:
    """A CA and the PEM files signed by it."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_pair(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(name="pki", scope="module")
def fixture_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with a server certificate (localhost, 127.0.0.1) and a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("cxr-triage test CA", ca_key, None, ca_key, ca=True)
    ca_path, _ = _write_pair(folder, "ca", ca_cert, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate(
        "localhost", server_key, ca_cert.subject, ca_key, ca=False, server=True
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _certificate("pacs-router", client_key, ca_cert.subject, ca_key, ca=False)
    s_cert, s_key = _write_pair(folder, "server", server_cert, server_key)
    c_cert, c_key = _write_pair(folder, "client", client_cert, client_key)
    return Pki(ca_path, s_cert, s_key, c_cert, c_key)


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
