"""Findings change pixels only inside their masks, scale with severity, and vanish at 0."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.phantoms.geometry import dilate
from models.phantoms.render import render_frontal
from models.phantoms.scenario import Scenario
from models.phantoms.study import StudySpec, plan_dataset
from triage_common.labels import CARDIOMEGALY, DEFAULT_LABELS

SIZE = 384  # >= HALF_RES_FROM: exercises the half-resolution smooth layers


@pytest.fixture(name="clean_specs", scope="module")
def fixture_clean_specs(confounded: Scenario) -> list[StudySpec]:
    """Six studies (several sites, PA and AP) with every finding switched off."""
    specs = plan_dataset(confounded, 11, 6, size=SIZE)
    return [dataclasses.replace(s, severities=dict.fromkeys(DEFAULT_LABELS, 0.0)) for s in specs]


def _with(spec: StudySpec, label: str, severity: float) -> StudySpec:
    severities = dict.fromkeys(DEFAULT_LABELS, 0.0)
    severities[label] = severity
    return dataclasses.replace(spec, severities=severities)


@pytest.mark.parametrize("label", DEFAULT_LABELS)
def test_finding_changes_pixels_only_inside_its_mask(
    clean_specs: list[StudySpec], label: str
) -> None:
    """Over 99% of the pixel change a finding causes lies in its mask widened by the blur."""
    for spec in clean_specs:
        base = render_frontal(spec, SIZE)
        sick = render_frontal(_with(spec, label, 0.6), SIZE)
        mask = sick.masks[label]
        assert mask.any()
        diff = np.abs(sick.image.astype(np.float64) - base.image)
        assert diff.sum() > 0.5
        inside = diff[dilate(mask, sick.blur_reach + 1)].sum()
        assert inside / diff.sum() > 0.99
        assert not any(m.any() for k, m in sick.masks.items() if k != label)


@pytest.mark.parametrize("label", DEFAULT_LABELS)
def test_severity_zero_is_exactly_absence(clean_specs: list[StudySpec], label: str) -> None:
    """A finding at severity 0 renders the same pixels as a study without that label at all."""
    spec = clean_specs[0]
    absent = dataclasses.replace(spec, severities={k: 0.2 for k in DEFAULT_LABELS if k != label})
    zero = dataclasses.replace(absent, severities={**absent.severities, label: 0.0})
    a, b = render_frontal(absent, SIZE), render_frontal(zero, SIZE)
    np.testing.assert_array_equal(a.stored, b.stored)
    assert not b.masks[label].any()


@pytest.mark.parametrize("label", DEFAULT_LABELS)
def test_low_severity_is_subtler_than_high(clean_specs: list[StudySpec], label: str) -> None:
    """The total pixel change at severity 0.1 is well below that at severity 0.9."""
    spec = clean_specs[1]
    base = render_frontal(spec, SIZE).image.astype(np.float64)
    low = np.abs(render_frontal(_with(spec, label, 0.1), SIZE).image - base).sum()
    high = np.abs(render_frontal(_with(spec, label, 0.9), SIZE).image - base).sum()
    assert 0 < low < 0.5 * high


def test_cardiothoracic_ratio_normal_and_enlarged(clean_specs: list[StudySpec]) -> None:
    """Normal hearts have CTR 0.40-0.50; cardiomegaly pushes it above 0.5, rising with severity."""
    for spec in clean_specs:
        normal = render_frontal(spec, SIZE).ctr
        assert normal is not None and 0.40 <= normal < 0.5
        ratios = []
        for severity in (0.05, 0.5, 1.0):
            ratio = render_frontal(_with(spec, CARDIOMEGALY, severity), SIZE).ctr
            assert ratio is not None and ratio > 0.5
            ratios.append(ratio)
        assert ratios == sorted(ratios) and ratios[-1] > 0.65


def test_rendered_image_is_a_unit_range_display_image(clean_specs: list[StudySpec]) -> None:
    """The float image lies in [0, 1] with dark lungs and a brighter mediastinum and abdomen."""
    image = render_frontal(clean_specs[2], SIZE).image
    assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() <= 1.0
    lung = image[int(0.35 * SIZE), int(0.25 * SIZE) : int(0.35 * SIZE)].mean()
    spine = image[int(0.35 * SIZE), int(0.49 * SIZE) : int(0.51 * SIZE)].mean()
    abdomen = image[int(0.9 * SIZE), int(0.4 * SIZE) : int(0.6 * SIZE)].mean()
    assert lung + 0.2 < spine and lung + 0.2 < abdomen
