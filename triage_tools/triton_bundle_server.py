"""A real Triton Inference Server serving a bundle's ONNX graph: run inside the PyTriton venv.

PyPI's ``nvidia-pytriton`` (0.7.0) ships a ``tritonserver`` binary (Triton 2.51) with the Python
backend only, no ONNX Runtime backend, and needs ``numpy<2``; so this script runs in its own
virtual environment (:mod:`triage_tools.triton_local` creates it) and is never imported by the
project's own interpreter. It opens the bundle's ``triage.onnx`` with ONNX Runtime (CPU) inside
a function bound to Triton, so the model Triton serves is the bundle's graph, with the tensor
names, shapes and dtypes of the bundle's manifest, behind Triton's dynamic batcher; clients
talk to the real ``tritonserver`` over the KServe v2 gRPC protocol.

``--rename OLD=NEW`` and ``--dims NAME=D1,D2`` change what Triton declares for a tensor (the
graph is unchanged): tests of the service's metadata check serve a model that differs from the
bundle in exactly one way.

Only the standard library, numpy, onnxruntime and pytriton are imported here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Any


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of the server script."""
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--model-name", default="cxr_triage", help="Triton model name")
    parser.add_argument("--grpc-port", type=int, required=True, help="KServe v2 gRPC port")
    parser.add_argument("--http-port", type=int, required=True, help="HTTP port (PyTriton's own)")
    parser.add_argument("--metrics-port", type=int, required=True, help="Prometheus port")
    parser.add_argument("--max-batch", type=int, default=8, help="Triton max_batch_size")
    parser.add_argument(
        "--max-queue-delay-us", type=int, default=2000, help="dynamic batcher queue delay (us)"
    )
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--tls-cert", type=Path, help="PEM server certificate: gRPC over TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca", type=Path, help="PEM CA that client certificates must chain to (mTLS)"
    )
    parser.add_argument(
        "--rename", action="append", default=[], metavar="OLD=NEW", help="declare a tensor as NEW"
    )
    parser.add_argument(
        "--dims",
        action="append",
        default=[],
        metavar="NAME=D1,D2",
        help="declare a tensor's dims (without the batch axis) as given",
    )


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{flag} {item!r}: expected NAME=VALUE")
        out[key] = value
    return out


def _use_own_libpython() -> None:
    """Make the Python backend stub load this interpreter's libpython.

    ``triton_python_backend_stub`` links ``libpython3.X.so.1.0`` by name; on a machine whose
    interpreter is not the system one (pyenv, a custom prefix) the loader finds the system's
    library of another patch release, whose built-in modules do not match this standard library
    (seen here: Debian's 3.11.2 against pyenv's 3.11.7 fails in ``multiprocessing`` with
    ``'_thread.RLock' object has no attribute '_recursion_count'``). Putting this
    interpreter's LIBDIR first fixes that; tritonserver and the stubs inherit the variable.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and Path(libdir).is_dir():
        current = os.environ.get("LD_LIBRARY_PATH", "")
        os.environ["LD_LIBRARY_PATH"] = libdir + (":" + current if current else "")


def serve(args: argparse.Namespace) -> int:
    """Bind the bundle's graph to Triton and serve until SIGTERM/SIGINT."""
    _use_own_libpython()
    import numpy as np
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    manifest: dict[str, Any] = json.loads((args.bundle / "manifest.json").read_text())
    model_file = args.bundle / manifest["model"]["file"]
    renames = _pairs(args.rename, "--rename")
    dims = {
        k: tuple(int(d) for d in v.split(",") if d) for k, v in _pairs(args.dims, "--dims").items()
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    input_name = manifest["input"]["name"]
    output_names = list(manifest["outputs"])

    def declared(name: str, shape: list[Any]) -> Any:
        own = dims.get(name, tuple(int(d) for d in shape[1:]))
        # Triton's per-item scalar: dims [1] (the client sees [batch, 1]), as export/triton.py
        return Tensor(name=renames.get(name, name), dtype=np.float32, shape=own or (1,))

    @batch  # type: ignore[untyped-decorator]
    def infer(**inputs: Any) -> dict[str, Any]:
        (images,) = inputs.values()
        outputs = session.run(output_names, {input_name: images.astype(np.float32, copy=False)})
        result = {}
        for name, value in zip(output_names, outputs, strict=True):
            value = np.asarray(value, dtype=np.float32)
            result[renames.get(name, name)] = (
                value.reshape(len(images), -1) if value.ndim == 1 else value
            )
        return result

    tls: dict[str, Any] = {}
    if args.tls_cert:
        tls = {"grpc_use_ssl": True, "grpc_server_cert": args.tls_cert}
        tls["grpc_server_key"] = args.tls_key
        if args.tls_client_ca:
            tls |= {"grpc_use_ssl_mutual": True, "grpc_root_cert": args.tls_client_ca}
    config = TritonConfig(
        **tls,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_address="127.0.0.1",
        http_port=args.http_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
        exit_timeout_secs=2,
    )
    batcher = DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()

    def orphaned() -> None:
        """Stop when the process that started us is gone (it runs us in our own session, so
        nothing else would end a server whose test or bench died without stopping it)."""
        while not stop.wait(1.0):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=orphaned, daemon=True).start()
    with Triton(config=config) as triton:
        triton.bind(
            model_name=args.model_name,
            infer_func=infer,
            inputs=[declared(input_name, manifest["input"]["shape"])],
            outputs=[declared(n, manifest["outputs"][n]["shape"]) for n in output_names],
            config=ModelConfig(max_batch_size=args.max_batch, batcher=batcher),
            strict=True,
        )
        triton.run()
        print(f"triton serving {args.model_name} on 127.0.0.1:{args.grpc_port}", flush=True)
        stop.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    configure(parser)
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
