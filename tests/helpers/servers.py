"""In-process triage servers for the tests: configurations, a fake model, channels and stubs.

The fixtures that start and stop servers (``server_factory``, ``shared_server``,
``worklist_server``) live in the conftest files and are built from these pieces.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from service._proto.triage.v1 import triage_pb2_grpc, worklist_pb2_grpc
from service.config import ServiceConfig, load_config
from service.rpc.server import TriageServer

#: ``factory(model=..., wait=True, **dotted)`` starts a server and gives it with its port.
ServerFactory = Callable[..., tuple[TriageServer, int]]

#: ``factory(**dotted)`` starts a server on the test's worklist file and gives it with its port.
WorklistServerFactory = Callable[..., tuple[TriageServer, int]]

#: Channel options of every test client: studies larger than gRPC's 4 MiB default.
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 256 << 20)]


def make_config(bundle: Path, **dotted: Any) -> ServiceConfig:
    """A configuration for ``bundle`` on a free loopback port with ``dotted`` overrides.

    The worklist is off unless a test sets ``worklist.path``: these tests resend one study
    (RG1) in several encodings and must see fresh inference, not the stored replay.
    """
    overrides: dict[str, Any] = {
        "bundle": str(bundle),
        "server.port": 0,
        "logging.level": "INFO",
        "worklist.path": "",
    }
    overrides.update(dotted)
    return load_config(None, env={}, overrides=overrides)


class FakeModel:
    """Model outputs of the right shapes; ``gate`` (if given) blocks every run until set."""

    def __init__(
        self, labels: int = 4, cam: tuple[int, int] = (2, 2), gate: threading.Event | None = None
    ) -> None:
        self.labels, self.cam, self.gate = labels, cam, gate
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Constant outputs (P(error) 0.1, OOD score 0), after waiting for the gate."""
        if self.gate is not None and batch.shape[0] and not self.gate.wait(30):
            raise TimeoutError("gate never opened")
        n = batch.shape[0]
        with self.lock:
            self.batches.append(n)
        return {
            "probabilities": np.full((n, self.labels), 0.25, np.float32),
            "cams": np.ones((n, self.labels, *self.cam), np.float32),
            "ood_score": np.zeros(n, np.float32),
            "p_error": np.full(n, 0.1, np.float32),
            "p_error_labels": np.full((n, self.labels), 0.05, np.float32),
        }


def open_channel(port: int) -> grpc.Channel:
    """An insecure channel to ``port`` on loopback (large messages allowed)."""
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)


def open_stub(port: int) -> tuple[grpc.Channel, triage_pb2_grpc.TriageStub]:
    """A fresh channel and stub to ``port`` on loopback."""
    channel = open_channel(port)
    return channel, triage_pb2_grpc.TriageStub(channel)


def worklist_stubs(port: int) -> tuple[triage_pb2_grpc.TriageStub, worklist_pb2_grpc.WorklistStub]:
    """Triage and Worklist stubs on one channel."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return triage_pb2_grpc.TriageStub(channel), worklist_pb2_grpc.WorklistStub(channel)
