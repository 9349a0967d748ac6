"""Model bundles for the service tests and for ``triage bench serve``, from random-init runs.

Reuses the export tests' tiny-run writers (``tests/export/export_runs.py``) and exports with
the real ``triage export onnx``. The architecture and input size are parameters, so the same
code makes the compact 64 px bundle of the service tests and a full DenseNet-121 224 px bundle
for benchmarks.

It imports torch, so the service tests call it in a subprocess
(:func:`build_bundle_subprocess`): the pytest process, and the in-process servers it starts,
stay torch-free. Command line: ``python -m tests.bundle_factory OUT [--arch A] [--size S]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_bundle(out: Path, *, arch: str = "compact", size: int = 64) -> Path:
    """Write random-init runs under ``out``'s parent and export them to ``out``."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from service.cli import main
    from tests.export.export_runs import write_classifier_run, write_csv_dataset, write_error_run

    work = out.parent / f".{out.name}-runs"
    dataset = write_csv_dataset(work / "dataset")
    model = write_classifier_run(work / "classifier", dataset, arch=arch, size=size)
    write_error_run(work / "error", work / "classifier", model)
    argv = ["export", "onnx", "--classifier", str(work / "classifier")]
    argv += ["--error-model", str(work / "error"), "--out", str(out), "--parity-images", "2"]
    if main(argv) != 0:
        raise RuntimeError(f"triage export onnx failed for {out}")
    return out


def build_bundle_subprocess(
    out: Path, *, arch: str = "compact", size: int = 64, timeout: float = 300.0
) -> Path:
    """:func:`build_bundle` in a fresh interpreter (keeps torch out of the calling process)."""
    cmd = [sys.executable, "-m", "tests.bundle_factory", str(out), "--arch", arch]
    cmd += ["--size", str(size)]
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
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    build_bundle(args.out, arch=args.arch, size=args.size)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
