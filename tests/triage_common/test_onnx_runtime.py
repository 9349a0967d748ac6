"""``triage_common.onnx_runtime``: quiet provider selection, the ONNX Runtime session wrapper and
the plan of parallel inference streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers.bundle_factory import SIZE
from triage_common import onnx_runtime as runtime
from triage_common.bundle_format import MODEL_FILE, OUTPUTS
from triage_common.onnx_runtime import (
    CPU,
    CUDA,
    TENSORRT,
    InferencePlan,
    OnnxRuntimeModel,
    available_providers,
    plan_inference,
)


def test_gpu_providers_are_dropped_quietly_on_a_cpu_host(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking for TensorRT, CUDA and CPU here yields only the CPU, with no ERROR on stderr."""
    if runtime._probe(CUDA, {}):
        pytest.skip("this host has a working CUDA provider")
    monkeypatch.setattr(runtime, "_probe_cache", {})
    capfd.readouterr()
    assert available_providers([TENSORRT, CUDA, CPU]) == [CPU]
    out, err = capfd.readouterr()
    assert "[E:" not in err and "ERROR" not in err.upper()
    assert "EP Error" not in out + err


def test_cpu_is_always_the_last_fallback() -> None:
    """The CPU provider closes every list, once, even when not requested."""
    assert available_providers([]) == [CPU]
    assert available_providers([CPU, CPU]) == [CPU]
    assert available_providers(["NoSuchExecutionProvider"]) == [CPU]


def test_probe_model_is_a_valid_identity_graph() -> None:
    """The built-in probe model is exactly onnx.helper's Identity model and passes the checker."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7, producer_name=""
    )
    onnx.checker.check_model(model)
    assert model.SerializeToString() == runtime.PROBE_MODEL


def test_session_options_and_run(bundle_path: Path) -> None:
    """Optimisation level ALL, configurable threads and spinning, and outputs by name."""
    model = OnnxRuntimeModel(
        bundle_path / MODEL_FILE, intra_op_threads=1, allow_spinning=False, providers=[CUDA, CPU]
    )
    options = model.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_ALL")
    assert model.providers[-1] == CPU
    outputs = model.run(np.zeros((2, 1, SIZE, SIZE), dtype=np.float64))
    assert tuple(outputs) == OUTPUTS
    assert all(v.shape[0] == 2 and v.dtype == np.float32 for v in outputs.values())
    with pytest.raises(ValueError, match="B, C, S, S"):
        model.run(np.zeros((1, SIZE, SIZE), dtype=np.float32))


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
