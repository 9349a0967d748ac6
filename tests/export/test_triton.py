"""``triage export triton``: config.pbtxt parsed with Triton's own schema, checked against ONNX."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tests.export.export_runs import Bundle
from triage_common.bundle_format import MODEL_FILE, sha256_file
from triage_tools.cli import main


def _graph_io(path: Path) -> dict[str, tuple[list[int], int]]:
    model = onnx.load(str(path))
    init = {t.name for t in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in init] + list(model.graph.output)
    return {
        v.name: (
            [d.dim_value for d in v.type.tensor_type.shape.dim[1:]],
            v.type.tensor_type.elem_type,
        )
        for v in values
    }


@pytest.mark.parametrize(("kind", "max_batch", "instances"), [("cpu", 8, 1), ("gpu", 4, 2)])
def test_config_parses_and_matches_onnx_graph(
    bundle: Bundle, tmp_path: Path, kind: str, max_batch: int, instances: int
) -> None:
    """Every config.pbtxt parses as a Triton ModelConfig whose tensors match the ONNX graph."""
    repo = tmp_path / "repo"
    argv = ["export", "triton", "--bundle", str(bundle.path), "--out", str(repo), "--kind", kind]
    assert main([*argv, "--max-batch", str(max_batch), "--instances", str(instances)]) == 0
    configs = sorted(repo.glob("*/config.pbtxt"))
    assert [c.parent.name for c in configs] == ["cxr_triage"]
    for config_path in configs:
        config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
        onnx_path = config_path.parent / "1" / "model.onnx"
        assert sha256_file(onnx_path) == bundle.manifest["files"][MODEL_FILE]["sha256"]
        assert config.name == config_path.parent.name
        assert config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == max_batch
        graph = _graph_io(onnx_path)
        tensors = list(config.input) + list(config.output)
        assert [t.name for t in config.input] == [
            i.name for i in onnx.load(str(onnx_path)).graph.input
        ]
        assert sorted(t.name for t in tensors) == sorted(graph)
        for t in tensors:
            dims, elem = graph[t.name]
            shape = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
            assert shape == dims, t.name
            assert t.data_type == model_config_pb2.TYPE_FP32 and elem == onnx.TensorProto.FLOAT
        batching = config.dynamic_batching
        assert batching.preferred_batch_size and max(batching.preferred_batch_size) <= max_batch
        assert batching.max_queue_delay_microseconds > 0
        (group,) = config.instance_group
        expected_kind = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}[kind]
        assert group.count == instances
        assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == expected_kind
        assert config.parameters["bundle_id"].string_value == bundle.manifest["bundle_id"]


def test_triton_refuses_a_tampered_bundle(
    bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bundle whose manifest no longer verifies is not turned into a repository (exit 1)."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    (copy / MODEL_FILE).write_bytes(b"not the exported graph")
    repo = tmp_path / "repo"
    assert main(["export", "triton", "--bundle", str(copy), "--out", str(repo)]) == 1
    assert MODEL_FILE in capsys.readouterr().err
    assert not (repo / "cxr_triage").exists()
