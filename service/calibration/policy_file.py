"""The calibrated defer policy: a JSON file ``triage calibrate`` writes and ``triage serve`` loads.

It holds the defer cost, the P(error) recalibration map, the OOD threshold, the operating point
the cost was chosen at, a summary of the calibration data, the date, and the bundle id it was
calibrated for (the service refuses a policy made for another bundle).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.calibration.recalibrate import Recalibration
from triage_common.bundle_format import BUNDLE_ID_HEX, canonical_json

POLICY_FORMAT = "cxr-triage/policy/1"


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
    """Write atomically (temporary file + rename), so a reload never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**policy.body(), "policy_id": policy.policy_id}, indent=2) + "\n")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


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
