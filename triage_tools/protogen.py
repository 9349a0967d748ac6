"""Build step: generate the Python gRPC stubs under ``service/_proto`` from ``protos/``.

Run ``python -m triage_tools.protogen`` after editing a .proto; a test regenerates into a temporary
folder and fails when the committed stubs are stale. Needs grpcio-tools (the dev extra).

protoc writes ``from triage.v1 import ...``; the stubs live in the ``service._proto`` package,
so those imports are rewritten. Descriptor file names stay ``triage/v1/*.proto`` (what server
reflection shows).

``kserve/v2/inference.proto`` is our own copy of the part of the KServe v2 / Open Inference
Protocol that the ``kserve`` inference backend calls (package ``inference``, as Triton serves it).
tritonclient's generated ``grpc_service.proto`` declares the same message names in the same
package, and protobuf's default descriptor pool refuses a second file defining a symbol
(``duplicate symbol 'inference.ServerLiveRequest'``), so the kserve stubs are built in a private
descriptor pool (:data:`PRIVATE_POOL`): both can be imported in one process (the export tests
use tritonclient's model_config_pb2). The wire format does not involve the pool.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("service") / "_proto"
PROTOS = ("triage/v1/triage.proto", "triage/v1/worklist.proto", "kserve/v2/inference.proto")
_IMPORT = re.compile(r"^from (triage\.v1|kserve\.v2) import", re.MULTILINE)
#: Generated modules whose descriptors go to their own pool instead of the default one.
PRIVATE_POOL = ("kserve/v2/inference_pb2.py",)
_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_OWN_POOL = (
    "POOL = _descriptor_pool.DescriptorPool()  # private: see triage_tools.protogen\n"
    "DESCRIPTOR = POOL.AddSerializedFile("
)


def _rewrite(relative: str, text: str) -> str:
    """Imports into ``service._proto``; the private pool for :data:`PRIVATE_POOL` modules."""
    text = _IMPORT.sub(lambda m: f"from service._proto.{m.group(1)} import", text)
    if relative in PRIVATE_POOL:
        if text.count(_DEFAULT_POOL) != 1:
            raise RuntimeError(f"protoc output of {relative} changed: no default-pool line")
        text = text.replace(_DEFAULT_POOL, _OWN_POOL)
    return text


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
            relative = source.relative_to(raw_dir).as_posix()
            dest.write_text(_rewrite(relative, source.read_text()))
            written.append(dest)
    folders = (
        {target}
        | {(target / p).parent for p in PROTOS}
        | {(target / p).parent.parent for p in PROTOS}
    )
    for folder in sorted(folders):
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
