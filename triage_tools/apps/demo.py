"""``triage demo``: the whole system on the embedded defaults, one command.

Each step is a real ``triage`` subcommand run as a child process (exactly what a user would
type; the printed command lines can be copied). A step whose outputs all exist is skipped, so
a second run reuses what is built. ``--fresh`` rebuilds everything.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from triage_tools.demo_serve import serve_and_submit


@dataclass(frozen=True)
class Step:
    """One demo step: a triage command line (or an action) and the files that show it is done.

    A step without outputs always runs.
    """

    name: str
    argv: tuple[str, ...]
    outputs: tuple[Path, ...]
    action: Callable[[], int] | None = None


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage demo``."""
    parser.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="output folder (demo-out)"
    )
    parser.add_argument(
        "--studies", type=int, default=3000, help="phantom studies to train on (3000)"
    )
    parser.add_argument("--size", type=int, default=256, help="phantom size in pixels")
    parser.add_argument("--input-size", type=int, default=128, help="model input size")
    parser.add_argument("--epochs", type=int, default=12, help="classifier epochs (12)")
    parser.add_argument("--lr", type=float, default=2e-3, help="classifier learning rate")
    parser.add_argument("--seed", type=int, default=7, help="seed of the training phantoms (7)")
    parser.add_argument("--workers", type=int, default=2, help="phantom rendering processes")
    parser.add_argument(
        "--calibration-studies",
        type=int,
        default=800,
        help="studies of each fresh calibration and evaluation set (800)",
    )
    parser.add_argument("--max-defer-rate", type=float, default=0.5, help="radiologist capacity")
    parser.add_argument(
        "--autoencoder-epochs", type=int, default=8, help="counterfactual autoencoder epochs (8)"
    )
    parser.add_argument("--fresh", action="store_true", help="delete demo outputs and rebuild")


def steps(args: argparse.Namespace) -> list[Step]:
    """The demo pipeline, in order."""
    out: Path = args.out
    data, runs = out / "data", out / "runs"
    cal, evl = out / "calibration-data", out / "evaluation-data"
    cls, err, ae = runs / "classifier", runs / "error_model", runs / "autoencoder"
    return [
        Step(
            "synthesise a confounded phantom scenario",
            (
                "synth",
                str(data),
                "--studies",
                str(args.studies),
                "--seed",
                str(args.seed),
                "--size",
                str(args.size),
                "--scenario",
                "confounded",
                "--syntax",
                "mixed",
                "--workers",
                str(args.workers),
            ),
            (data / "labels.csv", data / "dataset.json"),
        ),
        Step(
            "draw the contact sheet",
            ("contact-sheet", str(data), "--out", str(out / "contact_sheet.png")),
            (out / "contact_sheet.png",),
        ),
        Step(
            "train the compact classifier",
            (
                "train",
                "classifier",
                "--data",
                str(data),
                "--out",
                str(cls),
                "--config",
                "compact",
                "--size",
                str(args.input_size),
                "--epochs",
                str(args.epochs),
                "--lr",
                str(args.lr),
                "--seed",
                str(args.seed),
            ),
            (cls / "classifier.pt", cls / "classifier.json"),
        ),
        Step(
            "train the error models (Grad-CAM, probabilities-only, image-only) and OOD guards",
            (
                "train",
                "error-model",
                "--data",
                str(data),
                "--classifier",
                str(cls),
                "--out",
                str(err),
                "--seed",
                str(args.seed),
                # the probabilities-only network won on 3,000 fresh studies (README, "Do the
                # Grad-CAM maps earn their place?"): it is served; the Grad-CAM error model
                # and the image-only predictor are evaluated beside it
                "--serve",
                "probs_only",
            ),
            (err / "error_model.pt", err / "error_model.json"),
        ),
        Step(
            "train the counterfactual autoencoder on the classifier's images",
            (
                "train",
                "autoencoder",
                "--data",
                str(data),
                "--out",
                str(ae),
                "--split-from",
                str(cls),
                # 8 epochs of the classifier's 1,449 training images in steps of 16: about a
                # minute here (the README's Latent Shift section gives its quality beside
                # steps of 32)
                "--epochs",
                str(args.autoencoder_epochs),
                "--batch-size",
                "16",
                "--seed",
                str(args.seed),
            ),
            (ae / "autoencoder.pt", ae / "autoencoder.json"),
        ),
        Step(
            "export the ONNX model bundle (parity-checked against PyTorch)",
            (
                "export",
                "onnx",
                "--classifier",
                str(cls),
                "--error-model",
                str(err),
                "--out",
                str(out / "bundle"),
            ),
            (out / "bundle" / "manifest.json",),
        ),
        Step(
            "synthesise a fresh labelled calibration set (new patients, new seed)",
            (
                "synth",
                str(cal),
                "--studies",
                str(args.calibration_studies),
                "--seed",
                str(args.seed + 1000),
                "--size",
                str(args.size),
                "--scenario",
                "confounded",
                "--workers",
                str(args.workers),
            ),
            (cal / "labels.csv",),
        ),
        Step(
            "calibrate the defer cost through the served ONNX pipeline",
            (
                "calibrate",
                "--bundle",
                str(out / "bundle"),
                "--data",
                str(cal),
                "--out",
                str(out / "policy.json"),
                "--plot",
                str(out / "calibration.png"),
                "--max-defer-rate",
                str(args.max_defer_rate),
                # the compact demo model barely learns Pneumothorax: its sensitivity among
                # auto-reported studies is under the floor, which the policy records
                "--allow-low-critical-sensitivity",
            ),
            (out / "policy.json",),
        ),
        Step(
            "synthesise a separate labelled evaluation set (new patients, new seed)",
            (
                "synth",
                str(evl),
                "--studies",
                str(args.calibration_studies),
                "--seed",
                str(args.seed + 2000),
                "--size",
                str(args.size),
                "--scenario",
                "confounded",
                "--workers",
                str(args.workers),
            ),
            (evl / "labels.csv",),
        ),
        Step(
            "evaluate the defer policy against the baselines, per site",
            (
                "evaluate",
                "--bundle",
                str(out / "bundle"),
                "--data",
                str(evl),
                "--policy",
                str(out / "policy.json"),
                "--out",
                str(out / "evaluation"),
            ),
            (out / "evaluation" / "summary.md",),
        ),
        Step(
            "serve, submit held-out studies from every site plus RG1 and RG3, show the worklist",
            ("serve", "...", "&&", "submit", "..."),
            (),
            lambda: serve_and_submit(
                out, out / "bundle", out / "policy.json", data, cls / "split.json"
            ),
        ),
        Step(
            "explain the deferred items: Latent Shift counterfactuals (explainer worker)",
            (
                "explain-worker",
                "--bundle",
                str(out / "bundle"),
                "--classifier",
                str(cls),
                "--autoencoder",
                str(ae),
                "--worklist",
                str(out / "worklist.db"),
                "--drain",
                "--out",
                str(out / "explanations"),
            ),
            (),
        ),
        Step(
            "evaluate Latent Shift beside Grad-CAM (localisation, faithfulness, shortcut, TP/FP)",
            (
                "evaluate-explanations",
                "--bundle",
                str(out / "bundle"),
                "--classifier",
                str(cls),
                "--autoencoder",
                str(ae),
                "--data",
                str(evl),
                "--out",
                str(out / "explanations-eval"),
            ),
            (out / "explanations-eval" / "summary.md",),
        ),
    ]


def run(args: argparse.Namespace) -> int:
    """Run every step that is not yet done; stop at the first failure."""
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    plan = steps(args)
    for number, step in enumerate(plan, start=1):
        header = f"[{number}/{len(plan)}] {step.name}"
        if step.outputs and all(p.exists() for p in step.outputs):
            print(f"{header}: done already, reusing {step.outputs[0]}", flush=True)
            continue
        tick = time.monotonic()
        if step.action is not None:
            print(header, flush=True)
            code = step.action()
        else:
            print(f"{header}\n  $ triage {shlex.join(step.argv)}", flush=True)
            code = subprocess.call([sys.executable, "-m", "triage_tools.cli", *step.argv])
        if code != 0:
            print(f"demo step failed ({step.name}), exit status {code}", file=sys.stderr)
            return code
        print(f"  ({time.monotonic() - tick:.0f} s)", flush=True)
    print(f"demo finished in {time.monotonic() - started:.0f} s; outputs in {args.out}/")
    return 0
