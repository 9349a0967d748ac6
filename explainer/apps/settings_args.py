"""The Latent Shift settings as command-line flags (shared by the explainer's commands)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from models.latent_shift import LatentShiftSettings

_FLAGS = ("step", "step_growth", "drop", "floor", "max_image_change", "max_lambda", "frames")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--bundle``, ``--classifier``, ``--autoencoder`` and the search settings."""
    parser.add_argument("--bundle", type=Path, required=True, help="the served model bundle")
    parser.add_argument(
        "--classifier",
        type=Path,
        required=True,
        help="the classifier run the bundle was exported from (checked by sha256)",
    )
    parser.add_argument(
        "--autoencoder", type=Path, required=True, help="a `triage train autoencoder` run"
    )
    defaults = LatentShiftSettings()
    for f in dataclasses.fields(LatentShiftSettings):
        if f.name not in _FLAGS:
            continue
        kind = int if f.name == "frames" else float
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=kind,
            default=getattr(defaults, f.name),
            help=f"{f.metadata['doc']} ({getattr(defaults, f.name)})",
        )


def settings_from(args: argparse.Namespace) -> LatentShiftSettings:
    """The settings the flags give (ValueError naming a bad one)."""
    return LatentShiftSettings(**{name: getattr(args, name) for name in _FLAGS})
