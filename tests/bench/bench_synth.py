"""Phantom synthesis throughput benchmark (a script, not collected by pytest).

Runs ``triage bench synth`` in this process: renders studies of the default confounded scenario
in one process and prints studies/s for rendering alone and for rendering + writing (Explicit VR
DICOM and masks). Arguments are passed through, e.g.::

    .venv/bin/python tests/bench/bench_synth.py --studies 100 --size 512
"""

from __future__ import annotations

import sys

from triage_tools.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "synth", *sys.argv[1:]]))
