"""The calibrated defer policy: a JSON file ``triage calibrate`` writes and ``triage serve`` loads.

It holds the defer cost, the P(error) recalibration map, the OOD threshold, the operating point
the cost was chosen at, a summary of the calibration data, the date, and the bundle id it was
calibrated for (the service refuses a policy made for another bundle).

Format 2 (``cxr-triage/policy/2``, written since the calibration guard-rails) adds:

* ``guard_rails``: the minimums the set passed, the sensitivity for each critical finding among
  the auto-reported studies with its sample size and interval, the floor, and any ``--allow``
  flag that let a policy under the floor be written;
* ``monitoring`` (:class:`MonitoringReference`): per site of the calibration set (and ``all``),
  the share deferred and flagged OOD at the chosen cost and the histogram of the recalibrated
  P(error) over :data:`P_ERROR_BINS`: what the service's drift metrics and ``triage monitor``
  compare production against.

Format 1 files still load (without those two blocks); other formats are refused.
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

POLICY_FORMAT = "cxr-triage/policy/2"
#: Formats this reader accepts (the first lacks ``guard_rails`` and ``monitoring``).
READABLE_FORMATS = ("cxr-triage/policy/1", POLICY_FORMAT)
#: Edges of the P(error) histogram the policy carries for drift monitoring (20 equal bins).
P_ERROR_BINS: tuple[float, ...] = tuple(round(i / 20, 2) for i in range(21))
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


def p_error_histogram(p_error: npt.ArrayLike) -> list[int]:
    """Counts of P(error) values in the bins of :data:`P_ERROR_BINS` (1.0 in the last bin;
    NaN values are left out)."""
    q = np.asarray(p_error, dtype=np.float64)
    q = q[np.isfinite(q)]
    counts, _ = np.histogram(np.clip(q, 0.0, 1.0), bins=np.asarray(P_ERROR_BINS))
    return [int(c) for c in counts]


@dataclass(frozen=True)
class MonitoringReference:
    """The calibration set's expectations production is compared with, per group (``all`` and
    each site of the set): studies, deferral and OOD rates at ``defer_cost``, and P(error)
    histogram counts over :data:`P_ERROR_BINS`."""

    defer_cost: float
    studies: dict[str, int]
    deferral_rate: dict[str, float]
    ood_rate: dict[str, float]
    p_error_histogram: dict[str, list[int]]
    bins: tuple[float, ...] = P_ERROR_BINS

    @property
    def sites(self) -> tuple[str, ...]:
        """The calibration set's sites (the groups other than ``all``)."""
        return tuple(name for name in self.studies if name != "all")

    def group(self, site: str) -> str:
        """The group a production study of ``site`` is compared with: its own site when the
        calibration set had it (case and surrounding spaces aside: the service reads
        InstitutionName upper-cased), else ``all``."""
        key = site.strip().casefold()
        for name in self.studies:
            if name != "all" and name.strip().casefold() == key:
                return name
        return "all"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {
            "defer_cost": self.defer_cost,
            "bins": list(self.bins),
            "studies": dict(self.studies),
            "deferral_rate": dict(self.deferral_rate),
            "ood_rate": dict(self.ood_rate),
            "p_error_histogram": {k: list(v) for k, v in self.p_error_histogram.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MonitoringReference:
        """Inverse of :meth:`to_dict`, validated."""
        bins = tuple(float(b) for b in data["bins"])
        hist = {str(k): [int(c) for c in v] for k, v in dict(data["p_error_histogram"]).items()}
        if len(bins) < 2 or any(len(v) != len(bins) - 1 for v in hist.values()):
            raise ValueError("monitoring: each P(error) histogram needs one count per bin")
        studies = {str(k): int(v) for k, v in dict(data["studies"]).items()}
        if "all" not in studies:
            raise ValueError("monitoring: the reference lacks the 'all' group")
        return cls(
            defer_cost=float(data["defer_cost"]),
            studies=studies,
            deferral_rate={str(k): float(v) for k, v in dict(data["deferral_rate"]).items()},
            ood_rate={str(k): float(v) for k, v in dict(data["ood_rate"]).items()},
            p_error_histogram=hist,
            bins=bins,
        )


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
    guard_rails: dict[str, Any] = field(default_factory=dict)
    monitoring: MonitoringReference | None = None
    format: str = POLICY_FORMAT

    def body(self) -> dict[str, Any]:
        """The JSON body without the policy id (a format-1 file's body has no new keys, so its
        id still checks)."""
        body: dict[str, Any] = {
            "format": self.format,
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
        if self.format != READABLE_FORMATS[0]:
            body["guard_rails"] = self.guard_rails
            body["monitoring"] = None if self.monitoring is None else self.monitoring.to_dict()
        return body

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
    if data.get("format") not in READABLE_FORMATS:
        raise PolicyFileError(
            f"policy file {path}: unsupported format {data.get('format')!r} (this version reads "
            f"{', '.join(READABLE_FORMATS)}; recalibrate with `triage calibrate`)"
        )
    try:
        monitoring = data.get("monitoring")
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
            guard_rails=dict(data.get("guard_rails", {})),
            monitoring=None if monitoring is None else MonitoringReference.from_dict(monitoring),
            format=str(data["format"]),
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
