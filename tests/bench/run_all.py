"""``make bench``: every benchmark, figures printed and written to ``bench-results/*.json``.

1. ``triage bench synth``: phantom studies/s at 512 px (rendering, and rendering + DICOM write).
2. ``triage bench model``: full DenseNet-121 bundle vs plain ONNX classifier vs eager + Grad-CAM.
3. ``triage bench serve``: end-to-end gRPC studies/s and latency at concurrency 1, 8, 32 for
   uncompressed and JPEG 2000 RG1, beside model-only throughput, on a full-size 224 px bundle.
4. ``triage bench durability``: SIGKILL mid-stream rounds on a compact bundle (SQLite), then
   three replicas sharing a throwaway PostgreSQL, one SIGKILLed per round (20 rounds).
5. ``triage bench dicom``: studies/s through the Storage SCP beside gRPC, results to a storescp.
6. ``triage bench worklist``: results written and claims per second, SQLite and PostgreSQL.
7. ``triage bench explain``: triage studies/s and latency with and without an explainer worker
   beside the server, on the demo's bundle, classifier and autoencoder (``demo-out``; built by
   ``triage demo`` first when missing).

Comparisons are ratios measured within one run (these machines vary 10-30% between runs).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.bundle_factory import build_bundle_subprocess  # noqa: E402

OUT = ROOT / "bench-results"


def triage(*args: str, postgres: bool = False) -> int:
    """Run one ``triage`` command in a child process, streaming its output; with ``postgres``
    against a throwaway PostgreSQL (fsync on) whose URL it gets as TRIAGE_WORKLIST__URL."""
    print(f"\n$ triage {' '.join(args)}", flush=True)
    command = [sys.executable, "-m", "triage_tools.cli", *args]
    if postgres:
        command = [sys.executable, "-m", "tests.helpers.postgres", "--durable", "--", *command]
    return subprocess.call(command, cwd=ROOT)


def main() -> int:
    """Run the benchmarks; exit status 1 if any failed."""
    OUT.mkdir(exist_ok=True)
    codes = [
        triage("bench", "synth", "--studies", "100", "--size", "512"),
        triage("bench", "model", "--iterations", "10", "--json", str(OUT / "model.json")),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        full = build_bundle_subprocess(Path(tmp) / "full", arch="densenet121", size=224)
        compact = build_bundle_subprocess(Path(tmp) / "compact")
        codes.append(
            triage("bench", "serve", "--bundle", str(full), "--json", str(OUT / "serve.json"))
        )
        codes.append(
            triage(
                "bench",
                "durability",
                "--bundle",
                str(compact),
                "--rounds",
                "3",
                "--json",
                str(OUT / "durability.json"),
            )
        )
        codes.append(
            triage(
                "bench",
                "durability",
                "--bundle",
                str(compact),
                "--replicas",
                "3",
                "--rounds",
                "20",
                "--json",
                str(OUT / "durability-postgres.json"),
                postgres=True,
            )
        )
        codes.append(
            triage(
                "bench",
                "dicom",
                "--bundle",
                str(compact),
                "--studies",
                "16",
                "--out",
                str(OUT / "dicom.json"),
            )
        )
        codes.append(triage("bench", "worklist", "--studies", "1000", postgres=True))
    demo = ROOT / "demo-out"
    runs = demo / "runs"
    if not (runs / "autoencoder" / "autoencoder.pt").is_file():
        codes.append(triage("demo", "--out", str(demo)))
    codes.append(
        triage(
            "bench",
            "explain",
            "--bundle",
            str(demo / "bundle"),
            "--classifier",
            str(runs / "classifier"),
            "--autoencoder",
            str(runs / "autoencoder"),
            "--studies",
            "100",
            "--rounds",
            "3",
            "--out",
            str(OUT / "explain.json"),
        )
    )
    return 1 if any(codes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
