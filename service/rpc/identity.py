"""Who sent a call, as the result and the audit record it (never a secret, never patient data).

:func:`caller_identity` names the caller by the strongest credential the call carries:

- ``token:<name>``: a bearer token accepted by :class:`~service.rpc.auth.BearerTokenInterceptor`,
  by the name given to it in ``security.tokens_file`` (``NAME TOKEN`` lines), or
  ``token:#<8 hex>`` (a sha256 prefix of the token) for an unnamed one;
- ``tls:<common name>``: a verified client certificate (mutual TLS);
- ``peer:<address>``: otherwise, the client's address without its port.

A calling AE title (declared by the sender, not authenticated) is appended as ``ae:<title>``.
Tokens are only looked up when authentication is on; with it off a token means nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from service.rpc.auth import token_from_metadata


def fingerprint(token: str) -> str:
    """A short, non-reversible name for a token (``#`` and 8 hex digits of its sha256)."""
    return "#" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


def token_names(named: Sequence[tuple[str, str]]) -> dict[str, str]:
    """``(name, token)`` pairs -> {fingerprint: name} (unnamed tokens: their fingerprint)."""
    return {fingerprint(token): name or fingerprint(token) for name, token in named}


def _peer(peer: str) -> str:
    """``ipv4:127.0.0.1:5555`` -> ``127.0.0.1``; ``ipv6:[::1]:5555`` -> ``::1``."""
    _, _, address = peer.partition(":")
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    host, _, port = address.rpartition(":")
    return host if host and port.isdigit() else address or "unknown"


def _common_name(context: Any) -> str:
    try:
        auth = context.auth_context() or {}
    except (AttributeError, NotImplementedError):
        return ""
    names: Sequence[bytes] = auth.get("x509_common_name") or ()
    return names[0].decode("utf-8", "replace") if names else ""


def caller_identity(context: Any, names: Mapping[str, str], ae_title: str = "") -> str:
    """The caller of ``context`` as the module docstring describes."""
    who = ""
    if names:
        token = token_from_metadata(context.invocation_metadata())
        if token:
            print_ = fingerprint(token)
            who = f"token:{names.get(print_, print_)}"
    if not who:
        common_name = _common_name(context)
        who = f"tls:{common_name}" if common_name else f"peer:{_peer(str(context.peer()))}"
    return f"{who} ae:{ae_title}" if ae_title else who
