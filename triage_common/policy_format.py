"""The calibrated defer policy: a JSON file ``triage calibrate`` writes and ``triage serve`` loads.

It holds the defer cost, the P(error) recalibration map, the OOD threshold, the operating point
the cost was chosen at, a summary of the calibration data, the date, and the bundle id it was
calibrated for (the service refuses a policy made for another bundle).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from triage_common.atomic import atomic_write_text
from triage_common.bundle_format import BUNDLE_ID_HEX, canonical_json

POLICY_FORMAT = "cxr-triage/policy/1"
#: P(error) values are clipped to [eps, 1 - eps] before a map is applied.
RECALIBRATION_EPS = 1e-6
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Recalibration:
    """A monotone map from raw P(error) to calibrated P(error)."""

    method: Literal["identity", "isotonic", "platt"]
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    a: float = 1.0
    b: float = 0.0

    def __call__(self, p: npt.ArrayLike) -> F64:
        q = np.clip(np.asarray(p, dtype=np.float64), RECALIBRATION_EPS, 1 - RECALIBRATION_EPS)
        if self.method == "identity":
            return q
        if self.method == "isotonic":
            out: F64 = np.interp(q, np.asarray(self.x), np.asarray(self.y))
            return out
        z = self.a * np.log(q / (1 - q)) + self.b
        platt: F64 = 1.0 / (1.0 + np.exp(-z))
        return platt

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {
            "method": self.method,
            "x": list(self.x),
            "y": list(self.y),
            "a": self.a,
            "b": self.b,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recalibration:
        """Inverse of :meth:`to_dict`, validated."""
        method = data.get("method")
        if method not in ("identity", "isotonic", "platt"):
            raise ValueError(f"unknown recalibration method {method!r}")
        x, y = (
            tuple(float(v) for v in data.get("x", ())),
            tuple(float(v) for v in data.get("y", ())),
        )
        if method == "isotonic" and (len(x) != len(y) or len(x) < 1 or list(x) != sorted(x)):
            raise ValueError("isotonic recalibration needs sorted knots x with one y per knot")
        return cls(method, x, y, float(data.get("a", 1.0)), float(data.get("b", 0.0)))


class PolicyFileError(ValueError):
    """The policy file is missing, malformed, or made for another bundle."""


@dataclass(frozen=True)
class CalibratedPolicy:
    """What the service applies from a calibration."""

    bundle_id: str
    defer_cost: float
    recalibration: Recalibration
    ood_threshold: float
    created: str
    selection: dict[str, Any] = field(default_factory=dict)
    operating_point: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The JSON body without the policy id."""
        return {
            "format": POLICY_FORMAT,
            "bundle_id": self.bundle_id,
            "created": self.created,
            "defer_cost": self.defer_cost,
            "recalibration": self.recalibration.to_dict(),
            "ood_threshold": self.ood_threshold,
            "selection": self.selection,
            "operating_point": self.operating_point,
            "data": self.data,
            "metrics": self.metrics,
        }

    @property
    def policy_id(self) -> str:
        """sha256 prefix over the canonical body: changes whenever anything in it changes."""
        return hashlib.sha256(canonical_json(self.body())).hexdigest()[:BUNDLE_ID_HEX]


def write_policy(path: Path, policy: CalibratedPolicy) -> None:
    """Write atomically (temporary file, fsync, rename), so a reload never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**policy.body(), "policy_id": policy.policy_id}
    atomic_write_text(path, json.dumps(body, indent=2) + "\n")


def read_policy(path: Path, bundle_id: str | None = None) -> CalibratedPolicy:
    """Read and validate a policy file; with ``bundle_id``, refuse one made for another bundle."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PolicyFileError(f"policy file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise PolicyFileError(f"policy file {path} is not valid JSON: {exc}") from exc
    if data.get("format") != POLICY_FORMAT:
        raise PolicyFileError(f"policy file {path}: unsupported format {data.get('format')!r}")
    try:
        policy = CalibratedPolicy(
            bundle_id=str(data["bundle_id"]),
            defer_cost=float(data["defer_cost"]),
            recalibration=Recalibration.from_dict(data["recalibration"]),
            ood_threshold=float(data["ood_threshold"]),
            created=str(data["created"]),
            selection=dict(data.get("selection", {})),
            operating_point=dict(data.get("operating_point", {})),
            data=dict(data.get("data", {})),
            metrics=dict(data.get("metrics", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyFileError(f"policy file {path}: {type(exc).__name__}: {exc}") from exc
    if not 0.0 <= policy.defer_cost <= 1.0:
        raise PolicyFileError(f"policy file {path}: defer_cost {policy.defer_cost} not in [0, 1]")
    if bundle_id is not None and policy.bundle_id != bundle_id:
        raise PolicyFileError(
            f"policy file {path} was calibrated for bundle {policy.bundle_id}, "
            f"not the loaded bundle {bundle_id}"
        )
    if data.get("policy_id") not in (None, policy.policy_id):
        raise PolicyFileError(f"policy file {path}: policy_id does not match its contents")
    return policy
