"""``triage explain STUDY...``: Latent Shift counterfactuals of DICOM studies from the command line.

Each STUDY is a DICOM file or a folder of one study's files. The study goes through the server's
own decoding (``service.stages``: eligibility picks the frontal chest image, the bundle's
canonical preprocessing), so the image explained is the one ``triage serve`` reads. For each
study the findings the bundle calls present are explained (most probable first, at most
``--max-findings``), or the most probable one when none is, or those ``--finding`` names. Writes
``OUT/<n>-<study hash>/<finding>.gif`` and ``.png`` (strip) and ``explanations.json``, and prints
one row per counterfactual. No patient data in the output names: studies are named by the hash
of their Study Instance UID.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from explainer.apps.settings_args import add_model_args, settings_from


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage explain``."""
    add_model_args(parser)
    parser.add_argument("studies", type=Path, nargs="+", metavar="STUDY", help="file or folder")
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument(
        "--finding", action="append", default=None, help="explain this finding (repeatable)"
    )
    parser.add_argument(
        "--max-findings", type=int, default=2, help="present findings explained per study (2)"
    )


def run(args: argparse.Namespace) -> int:
    """Explain every study; exit 2 on a refused flag or model, 1 if a study could not be read."""
    prog = "triage explain"
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    missing = [str(s) for s in args.studies if not s.exists()]
    if missing:
        print(f"{prog}: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.max_findings < 1:
        print(f"{prog}: --max-findings must be at least 1", file=sys.stderr)
        return 2

    from explainer.core import ExplainerMismatch, load_explainer
    from explainer.render import gif_bytes, strip_png
    from service.config import DecodeConfig, EligibilityConfig
    from service.core.errors import TriageError
    from service.stages.decode_pool import DecodeSetup, InProcessDecoder
    from triage_common.atomic import atomic_write_bytes
    from triage_common.console import print_table, write_json
    from triage_common.labels import file_stem
    from triage_common.logging import hash_uid
    from triage_tools.client import expand_paths

    try:
        explainer = load_explainer(args.bundle, args.classifier, args.autoencoder, settings)
    except (FileNotFoundError, ExplainerMismatch, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if args.finding:
        unknown = [f for f in args.finding if f not in explainer.labels]
        if unknown:
            print(f"{prog}: --finding {unknown}: not among {list(explainer.labels)}",
                  file=sys.stderr)  # fmt: skip
            return 2
    decoder = InProcessDecoder(
        DecodeSetup.from_config(DecodeConfig(), EligibilityConfig(), explainer.spec)
    )
    thresholds = explainer.classifier.thresholds
    rows, report, failed = [], [], 0
    for number, study_path in enumerate(args.studies, start=1):
        try:
            study = decoder.decode(
                [p.read_bytes() for p in expand_paths([study_path])],
                want_display=False,
                deadline=None,
            )
        except TriageError as exc:  # our own messages: no header values
            print(f"{prog}: {study_path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        name = f"{number:03d}-{hash_uid(study.study_instance_uid)}"
        probabilities = explainer.probabilities(study.image)
        ranked = sorted(range(len(explainer.labels)), key=lambda k: -probabilities[k])
        if args.finding:
            labels = list(args.finding)
        else:
            present = [k for k in ranked if probabilities[k] >= thresholds[k]]
            labels = [explainer.labels[k] for k in (present[: args.max_findings] or ranked[:1])]
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        for e in explainer.explain(study.image, labels):
            stem = file_stem(e.label)
            atomic_write_bytes(folder / f"{stem}.gif", gif_bytes(e))
            atomic_write_bytes(folder / f"{stem}.png", strip_png(e))
            p0, p1 = e.predictions[0], e.predictions[-1]
            rows.append((name, e.label, e.probability, p0, p1, e.lambda_reached,
                         e.stop_rule.value, e.image_change, e.seconds))  # fmt: skip
            report.append(
                {
                    "study": name,
                    "finding": e.label,
                    "probability": e.probability,
                    "predictions": e.predictions.tolist(),
                    "lambdas": e.lambdas.tolist(),
                    "lambda_reached": e.lambda_reached,
                    "prediction_drop": e.prediction_drop,
                    "stop_rule": e.stop_rule.value,
                    "image_change": e.image_change,
                    "seconds": e.seconds,
                    "gif": str(folder / f"{stem}.gif"),
                    "strip": str(folder / f"{stem}.png"),
                }
            )
    write_json(
        args.out / "explanations.json",
        {
            "bundle_id": explainer.bundle_id,
            "autoencoder": explainer.explainer_id,
            "settings": dataclasses.asdict(explainer.settings),
            "counterfactuals": report,
        },
    )
    print_table(
        f"Latent Shift counterfactuals ({args.out})",
        ("study", "finding", "p", "p(x0)", "p(last)", "lambda", "stop rule", "change", "s"),
        rows,
    )
    return 1 if failed else 0
