"""The bundle manifest: contents, hashes, bundle id, and what tampering does."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import onnx
import pytest

from export.manifest import MANIFEST_KEYS, finalise_manifest, json_clean, write_manifest
from tests.export.export_runs import LABELS, SIZE, Bundle
from triage_common.bundle_format import (
    BUNDLE_FORMAT,
    MANIFEST,
    MODEL_FILE,
    OUTPUTS,
    BundleError,
    compute_bundle_id,
    read_manifest,
    sha256_file,
)


def test_manifest_describes_the_bundle(bundle: Bundle) -> None:
    """Every documented key is there and agrees with the ONNX graph and the runs."""
    m = bundle.manifest
    assert list(m) == [*MANIFEST_KEYS, "evaluation"]  # evaluation: the graphs never served
    assert m["format"] == BUNDLE_FORMAT and m["bundle_id"] == compute_bundle_id(m)
    assert m["provenance"]["created"].endswith("Z")  # the export time, outside the bundle id
    assert m["labels"] == list(LABELS)
    assert m["input"] == {"name": "image", "shape": ["batch", 1, SIZE, SIZE], "dtype": "float32"}
    assert list(m["outputs"]) == list(OUTPUTS)
    assert m["outputs"]["cams"]["shape"] == ["batch", len(LABELS), *m["cam"]["shape"]]
    assert m["preprocess"]["size"] == SIZE
    assert m["thresholds"] == dict(zip(LABELS, [0.3, 0.4, 0.5, 0.6], strict=True))
    assert m["cam"]["layer"] == "relu" and m["cam"]["output"] == "cams"
    assert m["error_model"]["output"] == "p_error"
    assert m["error_model"]["per_label_output"] == "p_error_labels"
    assert m["error_model"]["config"]["num_labels"] == len(LABELS)
    assert m["ood"]["kind"] == "multi-layer mahalanobis" and m["ood"]["output"] == "ood_score"
    assert m["ood"]["groups"] == ["block1", "block2", "block3", "pooled", "image"]
    assert m["ood"]["single_layer_threshold"] > 0
    assert m["error_model"]["served"] == "gradcam"
    assert m["ood"]["threshold"] > 0
    assert m["defer_cost"] == 0.2  # the default written as is, no arithmetic: exact
    prov = m["provenance"]
    assert prov["dataset"]["kind"] == "csv" and prov["classifier"]["sha256"]
    assert prov["classifier"]["metrics"]["val_macro_auroc"] is None  # NaN written as null
    assert prov["export"]["opset"] == 17 and prov["export"]["torch"] and prov["export"]["onnx"]
    assert prov["error_model"]["report"]["groups"][0]["error_detection_auroc"]
    graph = onnx.load(str(bundle.path / MODEL_FILE))
    dims = [d.dim_value for d in graph.graph.output[1].type.tensor_type.shape.dim[1:]]
    assert dims == m["outputs"]["cams"]["shape"][1:]
    entry = m["files"][MODEL_FILE]
    assert entry["sha256"] == sha256_file(bundle.path / MODEL_FILE)
    assert entry["bytes"] == (bundle.path / MODEL_FILE).stat().st_size
    evaluation = [m["evaluation"]["file"], m["evaluation"]["error_head"]["file"]]
    assert sorted(m["files"]) == sorted([MODEL_FILE, *evaluation])
    written = sorted(p.name for p in bundle.path.iterdir())
    assert written == sorted([MODEL_FILE, MANIFEST, *evaluation])


def test_tampered_onnx_is_refused_naming_the_file(bundle: Bundle, tmp_path: Path) -> None:
    """One flipped byte in the ONNX file makes read_manifest fail naming that file."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    data = bytearray((copy / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=MODEL_FILE):
        read_manifest(copy)


def test_tampered_manifest_fails_on_bundle_id(bundle: Bundle, tmp_path: Path) -> None:
    """Editing a manifest value (the defer cost) without a new bundle id is refused."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["defer_cost"] = 0.9
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bundle_id"):
        read_manifest(copy)


def test_manifest_writer_is_strict_json_and_atomic(tmp_path: Path) -> None:
    """Non-finite numbers become null, the id covers the body, and no temporary file remains."""
    (tmp_path / "a.bin").write_bytes(b"abc")
    body = {k: {"x": math.nan} for k in MANIFEST_KEYS if k not in ("format", "bundle_id", "files")}
    manifest = finalise_manifest(body, tmp_path, ["a.bin"])
    write_manifest(tmp_path, manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", MANIFEST]
    assert "NaN" not in (tmp_path / MANIFEST).read_text()
    assert read_manifest(tmp_path)["files"]["a.bin"]["bytes"] == 3
    assert json_clean({"v": [math.inf, 1.0]}) == {"v": [None, 1.0]}
