"""A tiny random-init bundle for the calibration tests, whose runs were made on a phantom set.

``tests.bundle_factory`` fits the OOD guard on random inputs, so it flags every phantom; here
the classifier run points at the phantom folder and the guard's threshold is raised so that
phantoms pass it (the guard itself is tested elsewhere). Imports torch: the tests call it in a
subprocess (:func:`build_subprocess`) so the pytest process stays torch-free.
Command line: ``python -m tests.calibration.phantom_bundle OUT DATA``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The raised OOD threshold (Mahalanobis distances of the random-init features stay far below).
OOD_THRESHOLD = 1e6


def build(out: Path, data: Path, size: int = 64) -> Path:
    """Random-init runs on ``data`` exported with ``triage export onnx`` to ``out``."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from service.cli import main
    from tests.export.export_runs import write_classifier_run, write_error_run

    work = out.parent / f".{out.name}-runs"
    model = write_classifier_run(work / "classifier", data, arch="compact", size=size)
    write_error_run(work / "error", work / "classifier", model)
    meta_path = work / "error" / "error_model.json"
    meta = json.loads(meta_path.read_text())
    meta["ood"]["threshold"] = OOD_THRESHOLD
    meta["ood"]["threshold_rule"] = "raised for the calibration tests (never flags)"
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    argv = ["export", "onnx", "--classifier", str(work / "classifier")]
    argv += ["--error-model", str(work / "error"), "--out", str(out), "--parity-images", "2"]
    if main(argv) != 0:
        raise RuntimeError(f"triage export onnx failed for {out}")
    return out


def build_subprocess(out: Path, data: Path, timeout: float = 300.0) -> Path:
    """:func:`build` in a fresh interpreter (keeps torch out of the calling process)."""
    cmd = [sys.executable, "-m", "tests.calibration.phantom_bundle", str(out), str(data)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"building the calibration test bundle failed:\n{done.stderr[-4000:]}")
    return out


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))
