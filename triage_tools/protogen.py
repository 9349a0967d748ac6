"""Build step: generate the Python gRPC stubs under ``service/_proto`` from ``protos/``.

Run ``python -m triage_tools.protogen`` after editing a .proto; a test regenerates into a temporary
folder and fails when the committed stubs are stale. Needs grpcio-tools (the dev extra).

protoc writes ``from triage.v1 import ...``; the stubs live in the ``service._proto`` package,
so those imports are rewritten. Descriptor file names stay ``triage/v1/*.proto`` (what server
reflection shows).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("service") / "_proto"
PROTOS = ("triage/v1/triage.proto", "triage/v1/worklist.proto")
_IMPORT = re.compile(r"^from triage\.v1 import", re.MULTILINE)


def generate(out_root: Path) -> list[Path]:
    """Generate stubs into ``out_root/service/_proto``; return the files written."""
    from grpc_tools import protoc  # dev-time only

    target = out_root / PACKAGE_DIR
    with tempfile.TemporaryDirectory() as raw_dir:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={raw_dir}",
            f"--pyi_out={raw_dir}",
            f"--grpc_python_out={raw_dir}",
            *PROTOS,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on " + ", ".join(PROTOS))
        written: list[Path] = []
        for source in sorted(Path(raw_dir).rglob("*.py*")):
            dest = target / source.relative_to(raw_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(_IMPORT.sub("from service._proto.triage.v1 import", source.read_text()))
            written.append(dest)
    for folder in (target, target / "triage", target / "triage" / "v1"):
        init = folder / "__init__.py"
        init.write_text(
            '"""Generated gRPC stubs (python -m triage_tools.protogen); do not edit."""\n'
        )
        written.append(init)
    return sorted(written)


def main(argv: list[str] | None = None) -> int:
    """Regenerate the committed stubs in place."""
    del argv
    for path in generate(ROOT):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
