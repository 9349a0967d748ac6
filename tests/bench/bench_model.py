"""Model throughput benchmark (a script, not collected by pytest).

Runs ``triage bench model`` in this process: the bundle graph under ONNX Runtime against a plain
ONNX DenseNet-121 classifier and against PyTorch eager + autograd Grad-CAM, at batch 1 and 8,
and prints the table. Arguments are passed through, e.g.::

    .venv/bin/python tests/bench/bench_model.py --iterations 5 --json bench-model.json
"""

from __future__ import annotations

import sys

from triage_tools.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "model", *sys.argv[1:]]))
