"""``dicom.allowed_callers``: entries parsed, and who may connect and associate."""

from __future__ import annotations

import pytest

from service.dicom.callers import Callers, parse_callers


def test_titles_hosts_and_networks() -> None:
    """A bare title calls from anywhere; TITLE@NET only from that network (IPv4-mapped IPv6
    included); a host no entry names may not connect."""
    callers = Callers(["CR1", "ROUTER@10.1.0.0/16", "PACS@192.168.7.9", "V6@::1"])
    assert callers.titles == ["CR1", "PACS", "ROUTER", "V6"]
    assert callers.allowed("CR1", "203.0.113.4")
    assert callers.allowed("ROUTER", "10.1.2.3") and not callers.allowed("ROUTER", "10.2.0.1")
    assert callers.allowed("PACS", "::ffff:192.168.7.9")
    assert callers.allowed("V6", "::1") and not callers.allowed("V6", "127.0.0.1")
    assert not callers.allowed("NOBODY", "10.1.2.3")
    assert callers.host_allowed("198.51.100.1")  # CR1 may call from anywhere
    assert Callers(["ROUTER@10.1.0.0/16"]).host_allowed("127.0.0.1") is False
    assert Callers([]).open and Callers([]).allowed("ANY", "1.2.3.4")


@pytest.mark.parametrize(
    ("entry", "words"),
    [("", "1 to 16"), ("A" * 17, "1 to 16"), ("CR1@not-a-net", "not an address"),
     ("BAD\\\\AE", "backslash")],
)  # fmt: skip
def test_malformed_entries_are_refused(entry: str, words: str) -> None:
    """Each malformed entry is a ValueError naming the problem."""
    with pytest.raises(ValueError, match=words):
        parse_callers([entry])
