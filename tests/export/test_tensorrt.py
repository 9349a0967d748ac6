"""``triage export tensorrt`` where TensorRT or a GPU is missing: a clear message and exit 3."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from export import tensorrt
from export.tensorrt import CudaDevice, MissingDependency, require_tensorrt
from tests.export.export_runs import Bundle
from triage_tools.cli import main


def test_missing_tensorrt_exits_3_naming_what_is_missing(
    bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Here (no tensorrt package, no GPU) the command exits 3, names both and writes nothing."""
    out = tmp_path / "engines"
    argv = ["export", "tensorrt", "--bundle", str(bundle.path), "--out", str(out)]
    if "tensorrt" in sys.modules or tensorrt.cuda_devices():
        pytest.skip("this host has TensorRT or a GPU")
    assert main([*argv, "--max-batch", "4", "--precision", "fp16", "fp32"]) == 3
    err = capsys.readouterr().err
    assert "tensorrt Python package is not installed" in err
    assert "no CUDA GPU" in err
    assert not out.exists()


def test_missing_package_alone_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a GPU but no tensorrt package, only the package is named."""
    monkeypatch.setattr(tensorrt, "cuda_devices", lambda: [CudaDevice(0, "Test GPU")])
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes the import fail
    with pytest.raises(MissingDependency) as info:
        require_tensorrt()
    assert "tensorrt Python package" in str(info.value) and "GPU" not in str(info.value)


def test_missing_gpu_alone_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the tensorrt package but no GPU, only the GPU is named."""
    monkeypatch.setattr(tensorrt, "cuda_devices", lambda: [])
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(MissingDependency, match="no CUDA GPU") as info:
        require_tensorrt()
    assert "package" not in str(info.value)
