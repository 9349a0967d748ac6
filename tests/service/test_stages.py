"""The pipeline stages on their own: decode limits, JPEG headers, eligibility, policy, routing."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.config import EligibilityConfig
from service.core.enums import Decision, DeferReason, Priority
from service.core.errors import (
    InferenceFailed,
    InvalidStudy,
    NotEligible,
    Overloaded,
    PolicyOutOfBounds,
    TooLarge,
)
from service.core.types import InstanceHeader
from service.rpc.status import STATUS_TABLE, status_for
from service.stages.batcher import MicroBatcher
from service.stages.decode import DecodeOptions, decode_instance, read_header
from service.stages.eligibility import select_frontal, study_uid
from service.stages.j2k import choose_level, parse_codestream, reduced_size
from service.stages.jpeg_header import jpeg_frame_size
from service.stages.policy import Policy, decide
from service.stages.routing import RoutingInput, route
from tests.service.conftest import FakeModel
from tests.service.dicom_factory import chest, file_bytes, huge_header
from triage_common.onnx_runtime import CPU, CUDA, InferencePlan, plan_inference

RULES = EligibilityConfig()


def _header(index: int, **kw: object) -> InstanceHeader:
    base = InstanceHeader(
        index=index,
        sop_instance_uid=f"1.2.3.{index}",
        study_instance_uid="1.2.3",
        modality="CR",
        body_part="CHEST",
        view_position="PA",
        photometric="MONOCHROME2",
        rows=100,
        columns=100,
        samples_per_pixel=1,
        frames=1,
        instance_number=index + 1,
        has_pixel_data=True,
        transfer_syntax="1.2.840.10008.1.2.1",
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_header_limit_before_allocation() -> None:
    """read_header refuses a 65535 x 65535 claim from the header alone."""
    with pytest.raises(TooLarge, match="65535 x 65535"):
        read_header(huge_header(), 0, max_pixels=100_000_000)
    header = read_header(huge_header(100, 100), 0, max_pixels=100_000_000)
    assert header.pixels == 10_000 and header.has_pixel_data


def test_codestream_must_match_header() -> None:
    """A JPEG 2000 frame whose SIZ disagrees with Rows/Columns is refused before decoding."""
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(file_bytes("RG1_J2KR.dcm")))
    ds.Rows = 100
    buffer = io.BytesIO()
    ds.save_as(buffer)
    data = buffer.getvalue()
    header = read_header(data, 0, 10**9)
    with pytest.raises(
        InvalidStudy, match="codestream is 1841 x 1955 but the header says 1841 x 100"
    ):
        decode_instance(data, header, DecodeOptions(10**9, 64))


def test_j2k_levels() -> None:
    """The reduced level keeps at least min_scale x the model size on the short side."""
    frame_info = parse_codestream(_rg1_j2k_frame())
    assert (frame_info.width, frame_info.height, frame_info.levels) == (1841, 1955, 5)
    assert frame_info.precision == 15 and not frame_info.signed
    assert reduced_size(1841, 2) == 461  # OpenJPEG's rounding (Pillow's would give 460)
    assert choose_level(frame_info, 224, 2.0) == 2
    assert choose_level(frame_info, 224, 1.0) == 3
    assert choose_level(frame_info, 1024, 2.0) == 0


def _rg1_j2k_frame() -> bytes:
    import io

    import pydicom
    from pydicom.encaps import get_frame

    ds = pydicom.dcmread(io.BytesIO(file_bytes("RG1_J2KR.dcm")))
    return bytes(get_frame(ds.PixelData, 0, number_of_frames=1))


def test_reduced_decode_matches_full_display() -> None:
    """The reduced RG1 display equals a block-average of the full one to within a few percent."""
    data = file_bytes("RG1_J2KR.dcm")
    header = read_header(data, 0, 10**9)
    full = decode_instance(data, header, DecodeOptions(10**9, 224, reduce=False))
    reduced = decode_instance(data, header, DecodeOptions(10**9, 224, reduce_min_scale=2.0))
    assert full.reduce_level == 0 and reduced.reduce_level == 2
    assert reduced.display.shape == (489, 461)
    h, w = 488, 460
    blocks = full.display[: h * 4, : w * 4].reshape(h, 4, w, 4).mean(axis=(1, 3))
    assert float(np.abs(blocks - reduced.display[:h, :w]).mean()) < 0.01


def test_jpeg_frame_size() -> None:
    """The SOF marker of a JPEG codestream gives its size; garbage gives None."""
    import io

    import pydicom
    from pydicom.encaps import get_frame

    ds = pydicom.dcmread(io.BytesIO(file_bytes("JPEG-LL.dcm")))
    frame = bytes(get_frame(ds.PixelData, 0, number_of_frames=1))
    assert jpeg_frame_size(frame) == (ds.Columns, ds.Rows)
    assert jpeg_frame_size(b"\xff\xd8\xff\xda\x00\x02") is None
    assert jpeg_frame_size(b"not a jpeg") is None


def test_selection_rule() -> None:
    """PA beats AP, then the larger image, then the lower InstanceNumber; laterals are ignored."""
    headers = [
        _header(0, view_position="AP", rows=4000, columns=4000),
        _header(1, view_position="LL"),
        _header(2, view_position="PA", instance_number=9),
        _header(3, view_position="PA", instance_number=2),
        _header(4, view_position="PA", instance_number=5, rows=200),
        _header(5, view_position="", rows=5000),
    ]
    selection = select_frontal(headers, RULES)
    assert selection.chosen.index == 4
    assert {i.index: i.reason for i in selection.ignored}[1] == "lateral view (LL)"
    selection = select_frontal(headers[2:4], RULES)
    assert selection.chosen.index == 3
    assert select_frontal([headers[5]], RULES).notes == (
        "ViewPosition missing (treated as frontal)",
    )


def test_eligibility_reasons() -> None:
    """Each rule names its reason; missing body part is allowed unless configured otherwise."""
    cases = {
        "modality CT is not CR or DX": _header(0, modality="CT"),
        "body part KNEE is not CHEST": _header(0, body_part="KNEE"),
        "PhotometricInterpretation RGB is not grayscale": _header(0, photometric="RGB"),
        "view position OBL is not frontal (PA or AP)": _header(0, view_position="OBL"),
    }
    for reason, header in cases.items():
        with pytest.raises(NotEligible, match=reason.replace("(", r"\(").replace(")", r"\)")):
            select_frontal([header], RULES)
    missing = _header(0, body_part="")
    assert select_frontal([missing], RULES).notes == ("BodyPartExamined missing (allowed)",)
    strict = dataclasses.replace(RULES, allow_missing_body_part=False)
    with pytest.raises(NotEligible, match="BodyPartExamined is missing"):
        select_frontal([missing], strict)
    with pytest.raises(InvalidStudy, match="no pixel data"):
        select_frontal([_header(0, has_pixel_data=False, modality="CT")], RULES)
    with pytest.raises(InvalidStudy, match="2 different studies"):
        study_uid([_header(0), _header(1, study_instance_uid="9.9")])


@given(
    p_error=st.floats(0, 1) | st.just(math.nan),
    ood=st.floats(-10, 10) | st.just(math.nan),
    cost=st.floats(0, 1),
    ood_threshold=st.floats(-10, 10),
)
def test_decision_rule(p_error: float, ood: float, cost: float, ood_threshold: float) -> None:
    """AUTO_REPORT iff P(error) <= cost and OOD score <= threshold; reasons list each failure."""
    result = decide(p_error, ood, Policy(defer_cost=cost, ood_threshold=ood_threshold), cost)
    auto = p_error <= cost and ood <= ood_threshold
    assert result.decision == (Decision.AUTO_REPORT if auto else Decision.DEFER)
    assert (DeferReason.P_ERROR_ABOVE_COST in result.reasons) == (not p_error <= cost)
    assert (DeferReason.OUT_OF_DISTRIBUTION in result.reasons) == (not ood <= ood_threshold)


def test_policy_bounds_and_recalibration() -> None:
    """Overrides outside the bounds raise; the recalibration hook maps P(error) before deciding."""
    policy = Policy(
        0.2, 5.0, min_defer_cost=0.1, max_defer_cost=0.5, version="p1", recalibrate=lambda p: p / 2
    )
    assert policy.cost_for(None) == 0.2 and policy.cost_for(0.5) == 0.5
    for bad in (0.05, 0.6, math.inf):
        with pytest.raises(PolicyOutOfBounds):
            policy.cost_for(bad)
    result = decide(0.3, 0.0, policy, 0.2)
    assert (
        result.p_error == 0.15
        and result.p_error_raw == 0.3
        and result.decision == Decision.AUTO_REPORT
    )
    assert result.policy_version == "p1"


def test_routing_defaults() -> None:
    """Issue-6 defaults: critical first (STAT even if deferred), deferred, confirm, ai-normal."""
    auto, defer = Decision.AUTO_REPORT, Decision.DEFER
    none: frozenset[str] = frozenset()
    edema, ptx = frozenset({"Edema"}), frozenset({"Pneumothorax"})
    assert route(RoutingInput(defer, findings_present=ptx)) == ("radiologist", Priority.STAT)
    assert route(RoutingInput(auto, findings_present=ptx)) == ("radiologist", Priority.STAT)
    assert route(RoutingInput(defer, findings_present=none)) == ("radiologist", Priority.ROUTINE)
    assert route(RoutingInput(auto, findings_present=edema)) == (
        "radiologist-confirm",
        Priority.ROUTINE,
    )
    assert route(RoutingInput(auto, findings_present=none)) == ("ai-normal", Priority.ROUTINE)


def test_status_table() -> None:
    """Every table entry maps to its code; unknown exceptions become INTERNAL without their text."""
    import grpc

    assert status_for(NotEligible("x")) == (grpc.StatusCode.FAILED_PRECONDITION, "x")
    assert status_for(Overloaded("y"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    code, message = status_for(KeyError("Zyxwquux^Patient"))
    assert code == grpc.StatusCode.INTERNAL and "Zyxwquux" not in message
    assert len({kind for kind, _ in STATUS_TABLE}) == len(STATUS_TABLE)


def test_batcher_batches_and_bounds() -> None:
    """The batcher groups waiting images up to max_batch, refuses beyond capacity, drops expired."""
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = MicroBatcher(model, max_batch=3, max_wait_ms=20, capacity=5)
    batcher.start()
    image = np.zeros((1, 8, 8), np.float32)
    first = batcher.submit(image, None)  # taken alone, blocks in the model
    time.sleep(0.1)
    waiting = [batcher.submit(image, None) for _ in range(4)]
    expired = batcher.submit(image, time.monotonic() - 1.0)
    with pytest.raises(Overloaded):
        batcher.submit(image, None)
    gate.set()
    assert first.result(5).batch_size == 1
    assert [f.result(5).batch_size for f in waiting] == [3, 3, 3, 1]
    with pytest.raises(Exception, match="deadline"):
        expired.result(5)
    batcher.stop(5)
    assert model.batches == [1, 3, 1]


class _PairedModel:
    """Probabilities echo each image's value; a run returns only while another run is inside."""

    def __init__(self, wait_s: float) -> None:
        self.barrier = threading.Barrier(2, timeout=wait_s)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Wait for a second concurrent run, then answer."""
        self.barrier.wait()
        n = batch.shape[0]
        values = batch.reshape(n, -1)[:, :1].astype(np.float32)
        return {
            "probabilities": np.repeat(values, 4, axis=1),
            "cams": np.ones((n, 4, 2, 2), np.float32),
            "ood_score": np.zeros(n, np.float32),
            "p_error": values[:, 0],
            "p_error_labels": np.repeat(values, 4, axis=1),
        }


def test_batcher_streams_run_batches_at_once() -> None:
    """With two streams two batches are inside the model together; each image gets its own row."""
    batcher = MicroBatcher(_PairedModel(10.0), max_batch=1, max_wait_ms=0, capacity=8, streams=2)
    assert batcher.streams == 2
    batcher.start()
    values = (0.2, 0.4, 0.6, 0.8)
    futures = [batcher.submit(np.full((1, 4, 4), v, np.float32), None) for v in values]
    outputs = [f.result(20) for f in futures]
    batcher.stop(5)
    assert [o.p_error for o in outputs] == pytest.approx(values, abs=1e-6)
    assert all(o.batch_size == 1 for o in outputs)


def test_batcher_single_stream_runs_one_batch_at_a_time() -> None:
    """With one stream a run never overlaps another (the paired model then gives up)."""
    batcher = MicroBatcher(_PairedModel(0.5), max_batch=1, max_wait_ms=0, capacity=8, streams=1)
    batcher.start()
    future = batcher.submit(np.zeros((1, 4, 4), np.float32), None)
    with pytest.raises(InferenceFailed):
        future.result(20)
    batcher.stop(5)


@pytest.mark.parametrize(
    ("streams", "threads", "providers", "cores", "expected"),
    [
        (0, 0, [CPU], 2, InferencePlan(2, 1)),  # this machine: two single-threaded batches
        (0, 0, [CPU], 16, InferencePlan(4, 4)),  # at most four streams, cores shared out
        (0, 2, [CPU], 8, InferencePlan(4, 2)),  # threads set: streams fill the cores
        (1, 0, [CPU], 2, InferencePlan(1, 2)),  # one batch at a time on every core
        (3, 0, [CPU], 1, InferencePlan(3, 1)),  # never fewer than one thread
        (0, 0, [CUDA, CPU], 16, InferencePlan(1, 0)),  # a GPU runs one batch at a time
    ],
)
def test_inference_plan(
    streams: int, threads: int, providers: list[str], cores: int, expected: InferencePlan
) -> None:
    """Automatic streams and threads share the CPU cores out; a GPU provider gets one stream."""
    assert plan_inference(streams, threads, providers, cores) == expected


def test_uncompressed_chest_decodes() -> None:
    """A small uncompressed chest copy decodes to a display image in [0, 1]."""
    data = chest(factor=8)
    header = read_header(data, 0, 10**9)
    decoded = decode_instance(data, header, DecodeOptions(10**9, 64))
    assert decoded.display.shape == (header.rows, header.columns)
    assert float(decoded.display.min()) >= 0.0 and float(decoded.display.max()) <= 1.0


def test_native_pixels_match_pydicom() -> None:
    """The zero-copy native path returns exactly pydicom's pixel_array (unused bits cleared)."""
    import io

    import pydicom

    from service.stages.decode import native_pixels
    from tests.service.dicom_factory import to_bytes

    ds = pydicom.dcmread(io.BytesIO(chest(factor=8)))
    ds.BitsStored, ds.HighBit = 12, 11
    noisy = ds.pixel_array.astype(np.uint16) | np.uint16(0xA000)  # garbage above BitsStored
    ds.PixelData = noisy.tobytes()
    for data in (file_bytes("RG1_UNCR.dcm"), chest(factor=8), to_bytes(ds)):
        header = read_header(data, 0, 10**9)
        native = native_pixels(data, header)
        assert native is not None
        expected = pydicom.dcmread(io.BytesIO(data)).pixel_array
        assert np.array_equal(native[1], expected)
    for name in ("CT_small.dcm", "RG1_J2KR.dcm", "MR_small_RLE.dcm"):  # signed or compressed
        data = file_bytes(name)
        assert native_pixels(data, read_header(data, 0, 10**9)) is None


def test_box_reduced_uncompressed_close_to_full() -> None:
    """Uncompressed RG1 averaged over 4 x 4 blocks gives a display close to the full one."""
    data = file_bytes("RG1_UNCR.dcm")
    header = read_header(data, 0, 10**9)
    full = decode_instance(data, header, DecodeOptions(10**9, 224, reduce=False))
    reduced = decode_instance(data, header, DecodeOptions(10**9, 224))
    assert (full.box, reduced.box) == (1, 4) and reduced.display.shape == (488, 460)
    blocks = full.display[: 488 * 4, : 460 * 4].reshape(488, 4, 460, 4).mean(axis=(1, 3))
    assert float(np.abs(blocks - reduced.display).max()) < 1e-3


def test_tampered_bundle_refused(bundle_path: Path, tmp_path: Path) -> None:
    """create_server refuses a bundle whose model file no longer matches its sha256."""
    import shutil

    from service.rpc.server import create_server
    from tests.service.conftest import make_config
    from triage_common.bundle_format import BundleError

    copy = tmp_path / "bundle"
    shutil.copytree(bundle_path, copy)
    model = copy / "triage.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError, match=r"triage\.onnx does not match its sha256"):
        create_server(make_config(copy))
