"""Counterfactual jobs queued by the DICOM front door: a study deferred over C-STORE gets its
explanation job with the header and destinations its Secondary Capture needs."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest

from service.dicom.source import header_from_bytes
from service.worklist.explanations import EXPLAIN_PENDING
from service.worklist.store import STATES, SqliteWorklistStore
from tests.helpers import pydicom_data
from tests.helpers.dcmtk import free_port, require, storescu
from tests.helpers.dicom_factory import with_study_uid
from tests.helpers.dicom_servers import DicomServerFactory, destination

pytestmark = pytest.mark.slow


def test_a_study_deferred_over_dicom_queues_its_explanation_job(
    dicom_server: DicomServerFactory, tmp_path: Path
) -> None:
    """With explain on and a destination taking SCs, the deferred study's job holds the model
    input, the source header without pixels (its study) and that destination."""
    require("storescu")
    uid = pydicom.uid.generate_uid()
    study = tmp_path / "rg1.dcm"
    study.write_bytes(with_study_uid(pydicom_data.testdata("RG1_UNCR.dcm").read_bytes(), uid))
    server, port = dicom_server(
        **{
            "explain.enabled": True,
            "policy.defer_cost": 0.0,  # every study deferred
            "dicom.destinations": (
                destination(free_port(), name="pacs", kinds=["SC"]),
                destination(free_port(), name="ris", kinds=["SR"]),
            ),
        }
    )
    sent = storescu(port, [study])
    assert sent.returncode == 0, sent.stdout + sent.stderr
    store = SqliteWorklistStore(Path(server.config.worklist.path))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not store.list_items(states=STATES):
        time.sleep(0.05)
    (item,) = store.list_items(states=STATES)
    assert item.study_uid == uid
    (job,) = store.claim_explanations("test", [item.bundle_id])
    assert job.destinations == ("pacs",)  # only the destination that takes SCs
    assert job.size == 64 and len(job.model_input) == 4 * 64 * 64  # the test bundle's input
    header = header_from_bytes(job.source_header)
    assert header.StudyInstanceUID == uid and "PixelData" not in header
    pending = store.explanation(item.item_id)
    assert pending is not None and pending.state == EXPLAIN_PENDING
