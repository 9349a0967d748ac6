"""The ``triage`` command line: one entry point, subcommands dispatched from a table.

Each subcommand lives in its own module exposing ``configure(parser)`` and ``run(args) -> int``.
Only the chosen subcommand's module is imported, so ``triage serve`` never imports torch or the
train-time ``models`` package, and ``triage --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from triage_common.logging import configure_logging


class CommandModule(Protocol):
    """What a subcommand module provides."""

    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


@dataclass(frozen=True)
class Command:
    """One subcommand: its words on the command line, its module, and a one-line help."""

    words: tuple[str, ...]
    module: str
    help: str


#: The command table (data, not code): longest matching word sequence wins.
COMMANDS: tuple[Command, ...] = (
    Command(
        ("synth",), "models.apps.synth", "render a synthetic chest-radiograph dataset as DICOM"
    ),
    Command(
        ("contact-sheet",), "models.apps.contact_sheet", "draw a contact sheet PNG of a dataset"
    ),
    Command(
        ("train", "classifier"), "models.apps.train_classifier", "train the DenseNet classifier"
    ),
    Command(
        ("train", "error-model"), "models.apps.train_error_model", "train the Grad-CAM error model"
    ),
    Command(
        ("train", "autoencoder"),
        "models.apps.train_autoencoder",
        "train the autoencoder Latent Shift counterfactuals decode with",
    ),
    Command(
        ("evaluate-explanations",),
        "explainer.apps.evaluate_explanations",
        "Latent Shift counterfactuals beside Grad-CAM: localisation, faithfulness, shortcut, TP/FP",
    ),
    Command(
        ("explain",),
        "explainer.apps.explain",
        "Latent Shift counterfactuals (GIF, PNG strip) of DICOM studies",
    ),
    Command(
        ("bench", "explain"),
        "explainer.apps.bench_explain",
        "triage speed with and without an explainer worker beside it, same run",
    ),
    Command(
        ("explain-worker",),
        "explainer.apps.explain_worker",
        "make the counterfactuals the server queues with deferred items",
    ),
    Command(("bench", "synth"), "models.apps.bench_synth", "phantom rendering speed (studies/s)"),
    Command(
        ("bench", "error-levers"),
        "models.apps.bench_error_levers",
        "what the Grad-CAM maps add to the error model, lever by lever",
    ),
    Command(("export", "onnx"), "export.apps.onnx", "export the runs as an ONNX model bundle"),
    Command(("export", "tensorrt"), "export.apps.tensorrt", "build TensorRT engines from a bundle"),
    Command(("export", "triton"), "export.apps.triton", "write a Triton model repository"),
    Command(
        ("bench", "model"),
        "export.apps.bench_model",
        "bundle vs plain ONNX vs eager Grad-CAM speed",
    ),
    Command(
        ("demo",), "triage_tools.apps.demo", "the whole system end to end on the embedded defaults"
    ),
    Command(
        ("calibrate",),
        "triage_tools.apps.calibrate",
        "choose the defer cost on labelled data and write the policy file",
    ),
    Command(
        ("monitor",),
        "triage_tools.apps.monitor",
        "summarise a worklist export per site against the policy's expectation",
    ),
    Command(
        ("evaluate",),
        "triage_tools.apps.evaluate",
        "measure the defer policy against the baselines, per site",
    ),
    Command(("serve",), "service.apps.serve", "run the gRPC triage service"),
    Command(("submit",), "triage_tools.apps.submit", "send DICOM studies to a triage server"),
    Command(
        ("bench", "serve"),
        "triage_tools.apps.bench_serve",
        "end-to-end gRPC throughput and latency",
    ),
    Command(
        ("health",), "triage_tools.apps.health", "check a server's gRPC health (exit 0: SERVING)"
    ),
    Command(
        ("worklist",), "triage_tools.apps.worklist", "list, claim, release, complete, export items"
    ),
    Command(
        ("bench", "certificate"),
        "triage_tools.apps.bench_certificate",
        "does the certified risk hold on fresh test sets (calibration/test pairs)",
    ),
    Command(
        ("bench", "durability"), "triage_tools.apps.bench_durability", "SIGKILL the server, audit"
    ),
    Command(
        ("bench", "worklist"),
        "triage_tools.apps.bench_worklist",
        "results written/s and claims/s: SQLite and PostgreSQL, 1 and 3 replicas, same run",
    ),
    Command(
        ("bench", "dicom"),
        "triage_tools.apps.bench_dicom",
        "studies/s through the DICOM Storage SCP beside gRPC, same studies",
    ),
    Command(
        ("bench", "kserve"),
        "triage_tools.apps.bench_kserve",
        "studies/s through a remote Triton (KServe v2) beside in-process inference",
    ),
    Command(
        ("orthanc", "follow"),
        "integrations.orthanc.apps.follow",
        "the Orthanc sidecar: triage every stable chest study, post the results back",
    ),
    Command(
        ("orthanc", "config"),
        "integrations.orthanc.apps.config",
        "write a working Orthanc configuration (orthanc.json) for a triage server",
    ),
    Command(
        ("bench", "orthanc"),
        "integrations.orthanc.apps.bench",
        "studies/min through Orthanc and the sidecar beside gRPC only, same run",
    ),
)


def _usage(group: tuple[str, ...] = ()) -> str:
    """The command list, or only the commands of ``group`` (e.g. ``("export",)``)."""
    shown = [c for c in COMMANDS if c.words[: len(group)] == group]
    width = max(len(" ".join(c.words)) for c in shown)
    prefix = " ".join(("triage", *group))
    lines = [f"usage: {prefix} COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {' '.join(c.words):<{width}}  {c.help}" for c in shown]
    lines += ["", "`triage COMMAND --help` describes a command."]
    return "\n".join(lines)


def _group(argv: Sequence[str]) -> tuple[str, ...] | None:
    """The longest command-group prefix of ``argv`` (``triage export``), if any."""
    best: tuple[str, ...] | None = None
    for command in COMMANDS:
        for n in range(1, len(command.words)):
            words = command.words[:n]
            if tuple(argv[:n]) == words and (best is None or n > len(best)):
                best = words
    return best


def _match(argv: Sequence[str]) -> tuple[Command, list[str]] | None:
    best: Command | None = None
    for command in COMMANDS:
        n = len(command.words)
        if tuple(argv[:n]) == command.words and (best is None or n > len(best.words)):
            best = command
    if best is None:
        return None
    return best, list(argv[len(best.words) :])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``triage`` command line; returns the process exit status."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    log_level = "INFO"
    if len(args_in) >= 2 and args_in[0] == "--log-level":
        log_level, args_in = args_in[1], args_in[2:]
    if not args_in or args_in[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args_in else 2
    found = _match(args_in)
    if found is None:
        group = _group(args_in)
        if group is not None:
            rest = args_in[len(group) :]
            asked = bool(rest) and rest[0] in ("-h", "--help", "help")
            if not rest or asked:
                print(_usage(group), file=sys.stdout if asked else sys.stderr)
                return 0 if asked else 2
        print(f"triage: unknown command {' '.join(args_in[:2])!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    command, rest = found
    configure_logging(log_level)
    module = cast(CommandModule, importlib.import_module(command.module))
    parser = argparse.ArgumentParser(
        prog="triage " + " ".join(command.words), description=command.help
    )
    module.configure(parser)
    return int(module.run(parser.parse_args(rest)))


if __name__ == "__main__":
    raise SystemExit(main())
