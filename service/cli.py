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
        ("synth",), "models.phantoms.cli", "render a synthetic chest-radiograph dataset as DICOM"
    ),
    Command(
        ("contact-sheet",), "models.phantoms.sheet_cli", "draw a contact sheet PNG of a dataset"
    ),
    Command(("train", "classifier"), "models.train_classifier", "train the DenseNet classifier"),
    Command(("train", "error-model"), "models.train_error_model", "train the Grad-CAM error model"),
    Command(("bench", "synth"), "models.phantoms.bench_cli", "phantom rendering speed (studies/s)"),
    Command(("export", "onnx"), "export.onnx_cli", "export the runs as an ONNX model bundle"),
    Command(("export", "tensorrt"), "export.tensorrt_cli", "build TensorRT engines from a bundle"),
    Command(("export", "triton"), "export.triton_cli", "write a Triton model repository"),
    Command(("bench", "model"), "export.bench_cli", "bundle vs plain ONNX vs eager Grad-CAM speed"),
    Command(("demo",), "service.demo_cli", "the whole system end to end on the embedded defaults"),
    Command(
        ("calibrate",),
        "service.calibration.calibrate_cli",
        "choose the defer cost on labelled data and write the policy file",
    ),
    Command(
        ("evaluate",),
        "service.calibration.evaluate_cli",
        "measure the defer policy against the baselines, per site",
    ),
    Command(("serve",), "service.serve_cli", "run the gRPC triage service"),
    Command(("submit",), "service.submit_cli", "send DICOM studies to a triage server"),
    Command(("bench", "serve"), "service.bench_cli", "end-to-end gRPC throughput and latency"),
    Command(("health",), "service.health_cli", "check a server's gRPC health (exit 0: SERVING)"),
    Command(("worklist",), "service.worklist.cli", "list, claim, release, complete, export items"),
    Command(("bench", "durability"), "service.worklist.bench_cli", "SIGKILL the server, audit"),
)


def _usage() -> str:
    width = max(len(" ".join(c.words)) for c in COMMANDS)
    lines = ["usage: triage COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {' '.join(c.words):<{width}}  {c.help}" for c in COMMANDS]
    lines += ["", "`triage COMMAND --help` describes a command."]
    return "\n".join(lines)


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
