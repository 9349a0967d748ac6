"""Model bundles for the service tests and for ``triage bench serve``, from random-init runs.

Reuses the export tests' tiny-run writers (``tests/export/export_runs.py``) and exports with
the real ``triage export onnx``. The architecture and input size are parameters, so the same
code makes the compact 64 px bundle of the service tests and a full DenseNet-121 224 px bundle
for benchmarks.

The runs are made on a small CSV dataset of random images, or on ``data`` (a phantom folder:
the calibration tests). The OOD guard is fitted on random inputs and flags every phantom, so
``ood_threshold`` can raise it for tests that are about something else.

It imports torch, so the service tests call it in a subprocess
(:func:`build_bundle_subprocess`): the pytest process, and the in-process servers it starts,
stay torch-free. Command line: ``python -m tests.helpers.bundle_factory OUT [--arch A]
[--size S] [--data D] [--ood-threshold T]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: The input size (px) of the compact bundle the service tests share (``bundle_path``).
SIZE = 64

#: An OOD threshold that random-init features stay far below, so the guard never flags the
#: phantoms of tests that are about something else (the calibration bundle).
NEVER_FLAGGING_OOD_THRESHOLD = 1e6


def build_bundle(
    out: Path,
    *,
    arch: str = "compact",
    size: int = SIZE,
    data: Path | None = None,
    ood_threshold: float | None = None,
) -> Path:
    """Write random-init runs under ``out``'s parent and export them to ``out``."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from tests.export.export_runs import write_classifier_run, write_csv_dataset, write_error_run
    from triage_tools.cli import main

    work = out.parent / f".{out.name}-runs"
    dataset = data if data is not None else write_csv_dataset(work / "dataset")
    model = write_classifier_run(work / "classifier", dataset, arch=arch, size=size)
    write_error_run(work / "error", work / "classifier", model)
    if ood_threshold is not None:
        meta_path = work / "error" / "error_model.json"
        meta = json.loads(meta_path.read_text())
        meta["ood"]["threshold"] = ood_threshold
        meta["ood"]["threshold_rule"] = "raised for tests about something else (never flags)"
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    argv = ["export", "onnx", "--classifier", str(work / "classifier")]
    argv += ["--error-model", str(work / "error"), "--out", str(out), "--parity-images", "2"]
    if main(argv) != 0:
        raise RuntimeError(f"triage export onnx failed for {out}")
    return out


def build_bundle_subprocess(
    out: Path,
    *,
    arch: str = "compact",
    size: int = SIZE,
    data: Path | None = None,
    ood_threshold: float | None = None,
    timeout: float = 300.0,
) -> Path:
    """:func:`build_bundle` in a fresh interpreter (keeps torch out of the calling process)."""
    cmd = [sys.executable, "-m", "tests.helpers.bundle_factory", str(out), "--arch", arch]
    cmd += ["--size", str(size)]
    if data is not None:
        cmd += ["--data", str(data)]
    if ood_threshold is not None:
        cmd += ["--ood-threshold", repr(ood_threshold)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"building the test bundle failed:\n{done.stderr[-4000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: build one bundle."""
    parser = argparse.ArgumentParser(description="build a random-init model bundle")
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", default="compact", choices=("compact", "densenet121"))
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--data", type=Path, help="phantom folder to make the runs on")
    parser.add_argument("--ood-threshold", type=float, help="raise the OOD guard's threshold")
    args = parser.parse_args(argv)
    build_bundle(
        args.out,
        arch=args.arch,
        size=args.size,
        data=args.data,
        ood_threshold=args.ood_threshold,
    )
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
