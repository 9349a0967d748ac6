"""``grpc.health.v1.Health`` as the server runs it: Check, Watch and List all answer.

grpcio-health-checking's :class:`~grpc_health.v1.health.HealthServicer` leaves ``List`` to the
generated base class, which raises ``NotImplementedError`` (a traceback in the log for every
call) and answers an unknown service in ``Check`` with NOT_FOUND and no message. This subclass
keeps its own record of every status it is given, lists them, and names the known services
when a ``Check`` asks for another.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2


def _shown(name: str) -> str:
    return repr(name) if name else "'' (overall)"


class TriageHealthServicer(health.HealthServicer):  # type: ignore[misc]
    """The library's health servicer with ``List`` and a helpful NOT_FOUND."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._statuses_lock = threading.Lock()
        self._frozen = False

    def set(self, service: str, status: int) -> None:
        """Set ``service``'s status (ignored once graceful shutdown has begun)."""
        super().set(service, status)
        with self._statuses_lock:
            if not self._frozen:
                self._statuses[service] = status

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING from now on."""
        super().enter_graceful_shutdown()
        with self._statuses_lock:
            self._frozen = True

    def known(self) -> list[str]:
        """The service names, sorted."""
        with self._statuses_lock:
            return sorted(self._statuses)

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        """The status of one service; NOT_FOUND naming the known services for another."""
        with self._statuses_lock:
            status = self._statuses.get(request.service)
        if status is None:
            known = ", ".join(_shown(name) for name in self.known())
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no health service {request.service!r}; this server has {known}",
            )
        return health_pb2.HealthCheckResponse(status=status)

    def List(
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        """Every service with its status."""
        del request, context
        with self._statuses_lock:
            statuses = dict(self._statuses)
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in statuses.items()
            }
        )
