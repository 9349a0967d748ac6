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
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def write_classifier_run(run: Path, dataset: Path, arch: str, size: int, seed: int = 0) -> Any:
    """A random-init classifier run (``export_runs.write_classifier_run`` with arch and size)."""
    import torch

    from export.parity import synthetic_inputs
    from models.datasets import load_dataset
    from models.densenet import DenseNet, config_by_name
    from models.runs import CLASSIFIER_FORMAT, make_split, write_split
    from models.splits import SplitFractions
    from models.training import classifier_outputs
    from tests.export.export_runs import LABELS
    from triage_common.preprocess import PreprocessSpec

    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = config_by_name(arch, len(LABELS), 1, "relu")
    model = DenseNet(config)
    model.train()
    with torch.no_grad():  # batch-norm running statistics from a few random batches
        for _ in range(3):
            model(torch.randn(4, 1, size, size))
    model.eval()
    spec = PreprocessSpec(size=size)
    table = load_dataset(dataset, LABELS)
    split = make_split(table, SplitFractions(), seed)
    write_split(run, split)
    _, cams, _ = classifier_outputs(model, synthetic_inputs(1, spec))
    meta: dict[str, Any] = {
        "format": CLASSIFIER_FORMAT,
        "labels": list(LABELS),
        "architecture": {"name": arch, **asdict(config)},
        "preprocess": spec.to_dict(),
        "thresholds": [0.3, 0.4, 0.5, 0.6],
        "threshold_rule": "fixed (test bundle)",
        "cam": {"layer": "relu", "shape": list(cams.shape[2:])},
        "pooled_features": int(model.classifier.in_features),
        "data": table.description,
        "split_counts": split["counts"],
        "metrics": {"val_macro_auroc": float("nan"), "best_epoch": 1, "epochs_run": 1},
        "training": {"seed": seed, "torch": torch.__version__, "note": "random init (test)"},
    }
    torch.save(model.state_dict(), run / "classifier.pt")
    (run / "classifier.json").write_text(json.dumps(meta, indent=2) + "\n")
    return model


def build_bundle(out: Path, *, arch: str = "compact", size: int = 64) -> Path:
    """Write random-init runs under ``out``'s parent and export them to ``out``."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from service.cli import main
    from tests.export.export_runs import write_csv_dataset, write_error_run

    work = out.parent / f".{out.name}-runs"
    dataset = write_csv_dataset(work / "dataset")
    model = write_classifier_run(work / "classifier", dataset, arch, size)
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
