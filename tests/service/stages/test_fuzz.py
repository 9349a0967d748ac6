"""Mangled DICOM never escapes the error vocabulary: each failure is a TriageError with a reason."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.config import EligibilityConfig
from service.core.errors import TriageError
from service.rpc.server import configure_decoders
from service.stages.decode import DecodeOptions, decode_instance
from service.stages.eligibility import select_frontal, study_uid
from service.stages.header import read_header
from tests.helpers.dicom_factory import chest

configure_decoders()  # as in the server: lenient reading, no value-quoting warnings
_BASE = chest(factor=16)
_OPTIONS = DecodeOptions(max_pixels=10**7, model_size=64)


def _run(data: bytes) -> None:
    header = read_header(data, 0, _OPTIONS.max_pixels)
    study_uid([header])
    selection = select_frontal([header], EligibilityConfig())
    decoded = decode_instance(data, selection.chosen, _OPTIONS)
    assert decoded.display.ndim == 2


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(_BASE) - 1), st.integers(0, 255)), min_size=1, max_size=12
    ),
    cut=st.one_of(st.none(), st.integers(0, len(_BASE))),
    header_bias=st.booleans(),
)
def test_mangled_bytes_fail_cleanly(
    edits: list[tuple[int, int]], cut: int | None, header_bias: bool
) -> None:
    """Random byte edits and truncations either decode or raise a TriageError with a message."""
    data = bytearray(_BASE)
    for position, value in edits:
        if header_bias:
            position %= 2048  # most edits land in the header, where parsing happens
        data[position] = value
    if cut is not None:
        data = data[:cut]
    try:
        _run(bytes(data))
    except TriageError as exc:
        assert str(exc)
