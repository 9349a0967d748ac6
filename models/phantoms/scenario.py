"""Scenarios: what a phantom dataset looks like (sites, prevalences, confounders), read from JSON.

A scenario is data. ``load_scenario`` takes a built-in name (a file in ``scenarios/``) or a path,
checks every key (unknown keys, wrong types and out-of-range numbers are errors that name the
key), fills in defaults and returns frozen dataclasses. ``Scenario.to_dict`` gives back the fully
resolved form, which ``triage synth`` writes into ``dataset.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from triage_common.labels import DEFAULT_LABELS

SCENARIO_DIR = Path(__file__).parent / "scenarios"
TEXT_POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "top-center")
MODALITIES = ("CR", "DX")
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
BITS = (12, 16)


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the offending key."""


@dataclass(frozen=True)
class TextStyle:
    """How a burned-in label is drawn: size and inset are fractions of the image width.

    For the laterality marker, ``text`` is a template containing ``{letter}`` and ``position``
    is where an "L" goes; an "R" marker is mirrored to the other side (the patient's right).
    """

    position: str
    size: float
    inset: float
    stroke: int
    boxed: bool
    inverted: bool
    text: str


@dataclass(frozen=True)
class Acquisition:
    """A site's acquisition and processing style."""

    gamma: float
    contrast: float
    brightness: float
    noise: float
    blur: float
    exposure_jitter: float
    collimation_probability: float
    collimation_margin: tuple[float, float]
    heel: float


@dataclass(frozen=True)
class PortableAssociation:
    """P(portable | any true finding) and P(portable | no true finding) at a site."""

    given_finding: float
    given_no_finding: float


@dataclass(frozen=True)
class Site:
    """One acquiring site (hospital / department) with its equipment, style and case mix."""

    name: str
    weight: float
    heldout: bool
    modality: str
    photometric: str
    bits_stored: int
    manufacturer: str
    model: str
    station: str
    prevalence: dict[str, float]
    portable: PortableAssociation
    ap_fraction_nonportable: float
    marker_left_probability: float
    acquisition: Acquisition
    portable_label: TextStyle
    marker_label: TextStyle


@dataclass(frozen=True)
class LabelNoise:
    """Reader disagreement: P(miss) = miss_at_zero * exp(-severity / severity_scale); P(false +)."""

    miss_at_zero: float
    severity_scale: float
    false_positive: float


@dataclass(frozen=True)
class SeverityPrior:
    """Severity of a present finding ~ Beta(alpha, beta), clipped to [minimum, 1]."""

    alpha: float
    beta: float
    minimum: float


@dataclass(frozen=True)
class Scenario:
    """A complete, validated scenario."""

    name: str
    description: str
    sites: tuple[Site, ...]
    correlations: dict[str, dict[str, float]]
    patient_correlation: float
    studies_per_patient: dict[str, float]
    severity: dict[str, SeverityPrior]
    label_noise: LabelNoise
    lateral_fraction: float
    field_of_view_mm: float

    def site(self, name: str) -> Site:
        """The site called ``name``."""
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    def correlation_matrix(self) -> list[list[float]]:
        """The symmetric latent correlation matrix in DEFAULT_LABELS order."""
        n = len(DEFAULT_LABELS)
        matrix = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
        for a, row in self.correlations.items():
            for b, rho in row.items():
                i, j = DEFAULT_LABELS.index(a), DEFAULT_LABELS.index(b)
                matrix[i][j] = matrix[j][i] = rho
        return matrix

    def to_dict(self) -> dict[str, Any]:
        """The resolved scenario as plain JSON-able data (defaults filled in)."""
        out = asdict(self)
        for site in out["sites"]:
            site["acquisition"]["collimation_margin"] = list(
                site["acquisition"]["collimation_margin"]
            )
        return out


class _Reader:
    """Reads one JSON object, remembering which keys were used, to report unknown ones."""

    def __init__(self, data: object, where: str, source: str) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(f"{source}: {where} must be a JSON object")
        self.data: dict[str, Any] = data
        self.where = where
        self.source = source
        self.used: set[str] = set()

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: key '{self._path(key)}' {message}")

    def raw(self, key: str, default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise self.error(key, "is required but missing")
            return default
        return self.data[key]

    def number(
        self, key: str, default: Any = None, lo: float = -math.inf, hi: float = math.inf
    ) -> float:
        value = self.raw(key, _REQUIRED if default is None else default)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise self.error(key, f"must be a number (got {value!r})")
        if not lo <= value <= hi:
            raise self.error(key, f"must be between {lo} and {hi} (got {value!r})")
        return float(value)

    def integer(self, key: str, default: Any, choices: tuple[int, ...]) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value not in choices:
            raise self.error(key, f"must be one of {list(choices)} (got {value!r})")
        return value

    def string(self, key: str, default: Any = None, choices: tuple[str, ...] = ()) -> str:
        value = self.raw(key, _REQUIRED if default is None else default)
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a non-empty string (got {value!r})")
        if choices and value not in choices:
            raise self.error(key, f"must be one of {list(choices)} (got {value!r})")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false (got {value!r})")
        return value

    def child(self, key: str, default: Any = None) -> _Reader:
        value = self.raw(key, _REQUIRED if default is None else default)
        if not isinstance(value, dict):
            raise self.error(key, f"must be a JSON object (got {type(value).__name__})")
        return _Reader(value, self._path(key), self.source)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(
                unknown[0], f"is not a known key here (known keys: {', '.join(sorted(self.used))})"
            )


_REQUIRED = object()


def _label_map(
    reader: _Reader, key: str, default: dict[str, float] | None, lo: float, hi: float
) -> dict[str, float]:
    child = reader.child(key, default)
    out: dict[str, float] = {}
    for label in DEFAULT_LABELS:
        out[label] = child.number(label, None if default is None else default[label], lo, hi)
    child.finish()
    return out


def _text_style(reader: _Reader, key: str, default: dict[str, Any]) -> TextStyle:
    r = reader.child(key, default)
    style = TextStyle(
        position=r.string("position", default["position"], TEXT_POSITIONS),
        size=r.number("size", default["size"], 0.01, 0.2),
        inset=r.number("inset", default["inset"], 0.0, 0.3),
        stroke=int(r.number("stroke", default["stroke"], 0, 4)),
        boxed=r.boolean("boxed", default["boxed"]),
        inverted=r.boolean("inverted", default["inverted"]),
        text=r.string("text", default["text"]),
    )
    r.finish()
    return style


_ACQ_DEFAULT: dict[str, Any] = {
    "gamma": 1.0,
    "contrast": 1.0,
    "brightness": 0.0,
    "noise": 0.02,
    "blur": 1.0,
    "exposure_jitter": 0.08,
    "collimation_probability": 0.3,
    "collimation_margin": [0.01, 0.05],
    "heel": 0.05,
}
_PORTABLE_DEFAULT: dict[str, Any] = {
    "position": "top-left",
    "size": 0.04,
    "inset": 0.04,
    "stroke": 0,
    "boxed": False,
    "inverted": False,
    "text": "PORTABLE",
}
_MARKER_DEFAULT: dict[str, Any] = {
    "position": "top-right",
    "size": 0.06,
    "inset": 0.05,
    "stroke": 0,
    "boxed": True,
    "inverted": False,
    "text": "{letter}",
}


def _acquisition(reader: _Reader) -> Acquisition:
    r = reader.child("acquisition", _ACQ_DEFAULT)
    margin = r.raw("collimation_margin", _ACQ_DEFAULT["collimation_margin"])
    if (
        not isinstance(margin, list)
        or len(margin) != 2
        or not all(isinstance(m, int | float) and not isinstance(m, bool) for m in margin)
        or not 0 <= margin[0] <= margin[1] <= 0.2
    ):
        raise r.error(
            "collimation_margin",
            f"must be [low, high] with 0 <= low <= high <= 0.2 (got {margin!r})",
        )
    acq = Acquisition(
        gamma=r.number("gamma", _ACQ_DEFAULT["gamma"], 0.3, 3.0),
        contrast=r.number("contrast", _ACQ_DEFAULT["contrast"], 0.3, 3.0),
        brightness=r.number("brightness", _ACQ_DEFAULT["brightness"], -0.3, 0.3),
        noise=r.number("noise", _ACQ_DEFAULT["noise"], 0.0, 0.2),
        blur=r.number("blur", _ACQ_DEFAULT["blur"], 0.3, 4.0),
        exposure_jitter=r.number("exposure_jitter", _ACQ_DEFAULT["exposure_jitter"], 0.0, 0.5),
        collimation_probability=r.number(
            "collimation_probability", _ACQ_DEFAULT["collimation_probability"], 0.0, 1.0
        ),
        collimation_margin=(float(margin[0]), float(margin[1])),
        heel=r.number("heel", _ACQ_DEFAULT["heel"], 0.0, 0.3),
    )
    r.finish()
    return acq


def _site(data: object, where: str, source: str) -> Site:
    r = _Reader(data, where, source)
    portable = r.child("portable")
    association = PortableAssociation(
        given_finding=portable.number("given_finding", None, 0.0, 1.0),
        given_no_finding=portable.number("given_no_finding", None, 0.0, 1.0),
    )
    portable.finish()
    site = Site(
        name=r.string("name"),
        weight=r.number("weight", None, 0.0, 1e6),
        heldout=r.boolean("heldout", False),
        modality=r.string("modality", "CR", MODALITIES),
        photometric=r.string("photometric", "MONOCHROME2", PHOTOMETRICS),
        bits_stored=r.integer("bits_stored", 12, BITS),
        manufacturer=r.string("manufacturer", "Phantom Imaging"),
        model=r.string("model", "PX-1"),
        station=r.string("station", "PHANTOM01"),
        prevalence=_label_map(r, "prevalence", None, 0.0, 0.95),
        portable=association,
        ap_fraction_nonportable=r.number("ap_fraction_nonportable", 0.05, 0.0, 1.0),
        marker_left_probability=r.number("marker_left_probability", 0.8, 0.0, 1.0),
        acquisition=_acquisition(r),
        portable_label=_text_style(r, "portable_label", _PORTABLE_DEFAULT),
        marker_label=_text_style(r, "marker_label", _MARKER_DEFAULT),
    )
    if "{letter}" not in site.marker_label.text:
        raise ScenarioError(
            f"{source}: key '{where}.marker_label.text' must contain '{{letter}}' "
            f"(got {site.marker_label.text!r})"
        )
    r.finish()
    return site


def _correlations(reader: _Reader) -> dict[str, dict[str, float]]:
    r = reader.child("correlations", {})
    out: dict[str, dict[str, float]] = {}
    for a in list(r.data):
        if a not in DEFAULT_LABELS:
            r.used.add(a)
            raise r.error(a, f"is not a finding label (labels: {', '.join(DEFAULT_LABELS)})")
        row = r.child(a)
        out[a] = {}
        for b in list(row.data):
            if b not in DEFAULT_LABELS or b == a:
                row.used.add(b)
                raise row.error(b, "must name another finding label")
            out[a][b] = row.number(b, None, -0.95, 0.95)
        row.finish()
    r.finish()
    return out


def _check_positive_definite(matrix: list[list[float]], source: str) -> None:
    n = len(matrix)
    low = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            s = matrix[i][j] - sum(low[i][k] * low[j][k] for k in range(j))
            if i == j:
                if s <= 1e-9:
                    raise ScenarioError(
                        f"{source}: key 'correlations' does not form a valid correlation matrix "
                        "(not positive definite); lower some correlations"
                    )
                low[i][i] = math.sqrt(s)
            else:
                low[i][j] = s / low[j][j]


def parse_scenario(data: object, source: str = "<scenario>") -> Scenario:
    """Validate a scenario given as parsed JSON; raises ScenarioError naming the bad key."""
    r = _Reader(data, "", source)
    sites_raw = r.raw("sites", _REQUIRED)
    if not isinstance(sites_raw, list) or not sites_raw:
        raise r.error("sites", "must be a non-empty list of site objects")
    sites = tuple(_site(s, f"sites[{i}]", source) for i, s in enumerate(sites_raw))
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise r.error("sites", f"has duplicate site names ({names})")
    if sum(s.weight for s in sites) <= 0:
        raise r.error("sites", "must have at least one site with weight > 0")
    per_patient = r.child("studies_per_patient", {"1": 0.6, "2": 0.25, "3": 0.15})
    counts: dict[str, float] = {}
    for key in list(per_patient.data):
        if not key.isdigit() or not 1 <= int(key) <= 20:
            per_patient.used.add(key)
            raise per_patient.error(key, "must be a study count between 1 and 20")
        counts[key] = per_patient.number(key, None, 0.0, 1e6)
    per_patient.finish()
    if not counts or sum(counts.values()) <= 0:
        raise r.error("studies_per_patient", "must give a positive weight to some study count")
    severity_reader = r.child("severity", {})
    severity: dict[str, SeverityPrior] = {}
    for label in DEFAULT_LABELS:
        s = severity_reader.child(label, {})
        severity[label] = SeverityPrior(
            alpha=s.number("alpha", 1.3, 0.1, 50.0),
            beta=s.number("beta", 2.2, 0.1, 50.0),
            minimum=s.number("minimum", 0.03, 0.001, 0.5),
        )
        s.finish()
    severity_reader.finish()
    noise = r.child("label_noise", {})
    label_noise = LabelNoise(
        miss_at_zero=noise.number("miss_at_zero", 0.5, 0.0, 1.0),
        severity_scale=noise.number("severity_scale", 0.12, 0.001, 10.0),
        false_positive=noise.number("false_positive", 0.02, 0.0, 0.5),
    )
    noise.finish()
    scenario = Scenario(
        name=r.string("name"),
        description=r.string("description", "(no description)"),
        sites=sites,
        correlations=_correlations(r),
        patient_correlation=r.number("patient_correlation", 0.5, 0.0, 0.99),
        studies_per_patient=counts,
        severity=severity,
        label_noise=label_noise,
        lateral_fraction=r.number("lateral_fraction", 0.2, 0.0, 1.0),
        field_of_view_mm=r.number("field_of_view_mm", 430.0, 100.0, 1000.0),
    )
    r.finish()
    _check_positive_definite(scenario.correlation_matrix(), source)
    return scenario


def builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped with the package."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.json"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a built-in scenario by name, or a scenario JSON file by path."""
    text = str(name_or_path)
    path = Path(text)
    if not (path.suffix == ".json" or path.exists() or "/" in text):
        if text not in builtin_scenarios():
            raise ScenarioError(
                f"unknown scenario {text!r}: give a JSON file path or one of "
                f"{', '.join(builtin_scenarios())}"
            )
        path = SCENARIO_DIR / f"{text}.json"
    if not path.is_file():
        raise ScenarioError(f"scenario file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{path}: not valid JSON ({exc})") from exc
    return parse_scenario(data, str(path))
