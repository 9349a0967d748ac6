"""Bearer-token authentication as a gRPC server interceptor (off unless tokens are configured).

A call must carry ``authorization: Bearer <token>`` metadata with one of the configured tokens;
otherwise it ends with UNAUTHENTICATED before reaching a servicer. Tokens are compared in
constant time and never logged. ``grpc.health.v1`` stays open unless ``security.auth_health``
is set, so load balancers and orchestrator probes need no secret; reflection and every other
service need the token.

Production: use a token together with TLS (``security.tls_cert``/``tls_key``), or mutual TLS,
whenever the server listens on anything but loopback; a bearer token sent in clear text is
as good as public.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import Any

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"
_SCHEME = "bearer "


def token_from_metadata(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The bearer token of a call's metadata, or None."""
    for key, value in metadata or ():
        is_auth = key.lower() == "authorization" and isinstance(value, str)
        if is_auth and value[: len(_SCHEME)].lower() == _SCHEME:
            return str(value[len(_SCHEME) :]).strip()
    return None


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        del request
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class BearerTokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Rejects calls without a valid bearer token (health checks optionally exempt)."""

    def __init__(self, tokens: Sequence[str], *, protect_health: bool = False) -> None:
        if not tokens:
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._tokens = tuple(t.encode("utf-8") for t in tokens)
        self._protect_health = protect_health

    def _valid(self, token: str | None) -> bool:
        if token is None:
            return False
        given = token.encode("utf-8")
        ok = False
        for expected in self._tokens:  # no early exit: the time does not depend on which matched
            ok |= hmac.compare_digest(given, expected)
        return ok

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = str(handler_call_details.method)
        if method.startswith(HEALTH_PREFIX) and not self._protect_health:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if self._valid(token_from_metadata(handler_call_details.invocation_metadata)):
            return handler
        return _deny(handler)
