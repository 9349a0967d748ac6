"""Where results go: the ``[[dicom.destinations]]`` tables of the configuration, checked.

Each destination is a DICOM Storage SCP (a PACS, a router, a viewer's archive)::

    [[dicom.destinations]]
    name = "pacs"                 # names the outbox rows and the metrics (required, unique)
    ae_title = "PACS"             # the called AE title (required)
    host = "10.0.0.5"             # required
    port = 104                    # required
    kinds = ["SR", "SC", "SEG"]   # which objects it gets (SR, SC, SEG, KOS)
    sources = ["dicom", "grpc"]   # results of studies that came in by which front door
    calling_ae_title = ""         # our AE title towards it (empty: dicom.ae_title)
    tls = false                   # DICOM over TLS (then tls_ca verifies the peer)
    tls_ca = ""                   # PEM CA bundle
    tls_cert = ""                 # PEM client certificate and key (mutual TLS)
    tls_key = ""

Pure data and checks: nothing here touches the network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("SR", "SC", "SEG", "KOS")
SOURCES = ("dicom", "grpc")
_KEYS = {
    "name", "ae_title", "host", "port", "kinds", "sources", "calling_ae_title", "tls", "tls_ca",
    "tls_cert", "tls_key",
}  # fmt: skip


@dataclass(frozen=True)
class Destination:
    """One configured destination."""

    name: str
    ae_title: str
    host: str
    port: int
    kinds: tuple[str, ...] = ("SR", "SC", "SEG")
    sources: tuple[str, ...] = SOURCES
    calling_ae_title: str = ""
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""


def check_ae_title(title: str, what: str) -> None:
    """ValueError unless ``title`` is a valid AE title (1-16 characters, no backslash or
    control characters, not only spaces)."""
    if not title.strip() or len(title) > 16:
        raise ValueError(f"{what} {title!r} must be 1 to 16 characters")
    if "\\" in title or any(ord(c) < 32 for c in title):
        raise ValueError(f"{what} {title!r} has a backslash or a control character")


def _strings(value: Any, key: str, allowed: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{key} must be a list")
    out = tuple(str(v) for v in value)
    unknown = [v for v in out if v not in allowed]
    if unknown or not out:
        raise ValueError(f"{key} must list some of {list(allowed)}, got {list(out)}")
    return out


def _one(index: int, table: Mapping[str, Any]) -> Destination:
    where = f"destination {index + 1}"
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}")
    missing = [k for k in ("name", "ae_title", "host", "port") if k not in table]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    name = str(table["name"])
    if not name.strip():
        raise ValueError(f"{where}: name must not be empty")
    where = f"destination {name!r}"
    port = table["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{where}: port must be between 1 and 65535")
    check_ae_title(str(table["ae_title"]), f"{where}: ae_title")
    calling = str(table.get("calling_ae_title", ""))
    if calling:
        check_ae_title(calling, f"{where}: calling_ae_title")
    tls = table.get("tls", False)
    if not isinstance(tls, bool):
        raise ValueError(f"{where}: tls must be true or false")
    for key in ("tls_ca", "tls_cert", "tls_key"):
        path = str(table.get(key, ""))
        if path and not Path(path).is_file():
            raise ValueError(f"{where}: {key} {path} does not exist")
    if bool(table.get("tls_cert")) != bool(table.get("tls_key")):
        raise ValueError(f"{where}: tls_cert and tls_key must be set together")
    return Destination(
        name=name,
        ae_title=str(table["ae_title"]),
        host=str(table["host"]),
        port=port,
        kinds=_strings(table.get("kinds", ("SR", "SC", "SEG")), f"{where}: kinds", KINDS),
        sources=_strings(table.get("sources", SOURCES), f"{where}: sources", SOURCES),
        calling_ae_title=calling,
        tls=tls,
        tls_ca=str(table.get("tls_ca", "")),
        tls_cert=str(table.get("tls_cert", "")),
        tls_key=str(table.get("tls_key", "")),
    )


def parse_destinations(tables: Sequence[Mapping[str, Any]]) -> tuple[Destination, ...]:
    """The destinations of ``[[dicom.destinations]]``; ValueError naming the first problem."""
    out = tuple(_one(i, t) for i, t in enumerate(tables))
    names = [d.name for d in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"destination name(s) {twice} appear more than once")
    return out
