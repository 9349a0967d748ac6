"""Who may associate with the Storage SCP: ``dicom.allowed_callers`` parsed and applied.

An entry is ``TITLE`` (that calling AE title from any host) or ``TITLE@HOST`` where HOST is an
IPv4/IPv6 address or a CIDR network. :class:`Callers` answers the three questions the SCP asks
in order: may this host connect at all (:meth:`Callers.host_allowed`), which calling AE titles
are known (:attr:`Callers.titles`, given to pynetdicom, which rejects any other at association),
and may this title call from this host (:meth:`Callers.allowed`). No entries: everyone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from service.dicom.destinations import check_ae_title

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Caller:
    """One entry: a calling AE title, from a network (None: any host)."""

    title: str
    network: Network | None = None


def parse_callers(entries: Sequence[str]) -> tuple[Caller, ...]:
    """The entries of ``dicom.allowed_callers``; ValueError naming a malformed one."""
    out = []
    for entry in entries:
        title, sep, host = entry.partition("@")
        check_ae_title(title, f"allowed caller {entry!r}: AE title")
        network = None
        if sep:
            try:
                network = ipaddress.ip_network(host.strip("[]"), strict=False)
            except ValueError:
                raise ValueError(
                    f"allowed caller {entry!r}: {host!r} is not an address or a CIDR network"
                ) from None
        out.append(Caller(title.strip(), network))
    return tuple(out)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class Callers:
    """The allow-list (see the module doc)."""

    def __init__(self, entries: Sequence[str]) -> None:
        self.entries = parse_callers(entries)

    @property
    def open(self) -> bool:
        """True when no entry is configured (anyone may call)."""
        return not self.entries

    @property
    def titles(self) -> list[str]:
        """The known calling AE titles (empty: any)."""
        return sorted({c.title for c in self.entries})

    def _matches(self, caller: Caller, host: str) -> bool:
        if caller.network is None:
            return True
        address = _address(host)
        return address is not None and address in caller.network

    def host_allowed(self, host: str) -> bool:
        """True when some entry lets ``host`` connect."""
        return self.open or any(self._matches(c, host) for c in self.entries)

    def allowed(self, title: str, host: str) -> bool:
        """True when ``title`` may call from ``host``."""
        title = title.strip()
        return self.open or any(c.title == title and self._matches(c, host) for c in self.entries)
