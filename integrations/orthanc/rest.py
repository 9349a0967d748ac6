"""A small client of Orthanc's REST API on the standard library (``urllib.request``).

The sidecar needs a handful of calls (the change feed, a study's instances and their tags, an
instance's file, ``POST /instances`` and study metadata); ``urllib`` does them with no new
dependency in the serving environment. Errors become :class:`OrthancError` carrying the HTTP
status (0 when Orthanc could not be reached), never a response body (it may hold patient data).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any


class OrthancError(Exception):
    """A failed REST call: ``status`` is the HTTP status, 0 when Orthanc was unreachable."""

    def __init__(self, method: str, path: str, status: int, reason: str) -> None:
        super().__init__(f"Orthanc {method} {path}: {status or 'unreachable'} {reason}".strip())
        self.status = status

    @property
    def transient(self) -> bool:
        """True for a failure worth retrying (unreachable, 5xx, timeout)."""
        return self.status == 0 or self.status >= 500


@dataclass(frozen=True)
class Change:
    """One entry of ``/changes``."""

    seq: int
    change_type: str
    resource_type: str
    resource_id: str


@dataclass(frozen=True)
class ChangePage:
    """One page of ``/changes``: its entries, the last sequence number and whether it is all."""

    changes: tuple[Change, ...]
    last: int
    done: bool


class OrthancClient:
    """Calls to one Orthanc server (``url`` like ``http://127.0.0.1:8042``)."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._auth: str | None = None
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._auth = f"Basic {token}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/octet-stream",
    ) -> bytes:
        """The raw response body of one call (raises :class:`OrthancError`)."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        if self._auth is not None:
            req.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as exc:
            raise OrthancError(method, path, exc.code, str(exc.reason)) from None
        except (urllib.error.URLError, OSError) as exc:
            raise OrthancError(method, path, 0, type(exc).__name__) from None

    def get_json(self, path: str) -> Any:
        """``GET path`` decoded as JSON."""
        return json.loads(self.request("GET", path))

    def system(self) -> dict[str, Any]:
        """``/system`` (name, version, ports)."""
        out: dict[str, Any] = self.get_json("/system")
        return out

    def changes(self, since: int, limit: int = 100) -> ChangePage:
        """``/changes?since=N&limit=M``."""
        page = self.get_json(f"/changes?since={int(since)}&limit={int(limit)}")
        entries = tuple(
            Change(int(c["Seq"]), str(c["ChangeType"]), str(c["ResourceType"]), str(c["ID"]))
            for c in page.get("Changes", [])
        )
        return ChangePage(entries, int(page.get("Last", since)), bool(page.get("Done", True)))

    def last_change(self) -> int:
        """The sequence number of the newest change (``/changes?last``)."""
        return int(self.get_json("/changes?last").get("Last", 0))

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        """``/studies/{id}/instances``: each instance with its main DICOM tags."""
        out: list[dict[str, Any]] = self.get_json(f"/studies/{_q(study_id)}/instances")
        return out

    def study(self, study_id: str) -> dict[str, Any]:
        """``/studies/{id}``."""
        out: dict[str, Any] = self.get_json(f"/studies/{_q(study_id)}")
        return out

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """``/instances/{id}/simplified-tags`` (top-level tags by keyword)."""
        out: dict[str, Any] = self.get_json(f"/instances/{_q(instance_id)}/simplified-tags")
        return out

    def instance_file(self, instance_id: str) -> bytes:
        """The instance's Part-10 file as Orthanc stored it."""
        return self.request("GET", f"/instances/{_q(instance_id)}/file")

    def post_instance(self, data: bytes) -> dict[str, Any]:
        """``POST /instances`` (Orthanc answers ``AlreadyStored`` for a SOP Instance it has)."""
        out: dict[str, Any] = json.loads(
            self.request("POST", "/instances", data, "application/dicom")
        )
        return out

    def metadata(self, study_id: str) -> dict[str, str]:
        """The study's metadata (``/studies/{id}/metadata?expand``)."""
        out: dict[str, str] = self.get_json(f"/studies/{_q(study_id)}/metadata?expand")
        return out

    def set_metadata(self, study_id: str, name: str, value: str) -> None:
        """``PUT /studies/{id}/metadata/{name}`` (declared in ``UserMetadata``)."""
        path = f"/studies/{_q(study_id)}/metadata/{_q(name)}"
        self.request("PUT", path, value.encode("utf-8"), "text/plain")

    def store_to_modality(self, modality: str, resource_id: str) -> dict[str, Any]:
        """``POST /modalities/{modality}/store``: C-STORE a resource to a declared modality."""
        path = f"/modalities/{_q(modality)}/store"
        out: dict[str, Any] = json.loads(
            self.request("POST", path, resource_id.encode(), "text/plain")
        )
        return out


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")
