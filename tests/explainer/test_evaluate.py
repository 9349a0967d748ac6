"""`triage evaluate-explanations`: image choice, the measures on hand-made maps, the command."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from explainer.evaluate import (
    GRADCAM,
    LATENT_SHIFT,
    REGION_KEYS,
    SHORTCUT_REGIONS,
    Explained,
    candidate_rows,
    faithfulness,
    load_named_regions,
    localisation,
    plan_cases,
    select_images,
    shortcut,
    tp_fp,
)
from triage_tools.cli import main

S = 8  # side of the hand-made maps and regions
LABELS = ("Cardiomegaly", "Edema")
NAMES = tuple(REGION_KEYS)


def _explained(
    attribution: npt.NDArray[np.float32],
    gradcam: npt.NDArray[np.float32],
    image: list[int],
    finding: list[int],
    positive: list[bool] | None = None,
    drop: list[float] | None = None,
    change: list[float] | None = None,
) -> Explained:
    k = len(image)
    return Explained(
        image=np.array(image, dtype=np.int64),
        finding=np.array(finding, dtype=np.int64),
        positive=np.array(positive if positive is not None else [True] * k, dtype=bool),
        attribution=attribution.astype(np.float32),
        gradcam=gradcam.astype(np.float32),
        probability=np.full(k, 0.9),
        reconstruction_probability=np.full(k, 0.8),
        prediction_drop=np.array(drop if drop is not None else [0.5] * k, dtype=np.float64),
        image_change=np.array(change if change is not None else [0.02] * k, dtype=np.float64),
        seconds=np.full(k, 0.1),
        stop_rules=("dropped_by",) * k,
    )


def _box(r0: int, r1: int, c0: int, c1: int, size: int = S) -> npt.NDArray[np.float32]:
    out = np.zeros((size, size), dtype=np.float32)
    out[r0:r1, c0:c1] = 1.0
    return out


def _regions(images: int) -> npt.NDArray[np.float32]:
    """(images, R, S, S): PORTABLE label top-left 2x2, marker top-right 1x2, lungs rows 3-6,
    heart rows 5-7 centre."""
    one = np.zeros((len(NAMES), S, S), dtype=np.float32)
    one[NAMES.index("text_portable")] = _box(0, 2, 0, 2)
    one[NAMES.index("text_marker")] = _box(0, 1, 6, 8)
    one[NAMES.index("text")] = one[NAMES.index("text_portable")] + one[NAMES.index("text_marker")]
    one[NAMES.index("lungs")] = _box(3, 7, 0, 8)
    one[NAMES.index("heart")] = _box(5, 8, 3, 5)
    return np.repeat(one[None], images, axis=0)


def _write_masks(masks_dir: Path, sop: str, **masks: npt.NDArray[np.float32]) -> None:
    masks_dir.mkdir(parents=True, exist_ok=True)
    full = {label: np.zeros((S, S), dtype=bool) for label in LABELS}
    full.update({label: m.astype(bool) for label, m in masks.items()})
    np.savez(masks_dir / f"{sop}.npz", **full)  # type: ignore[arg-type]


# --- choosing the images and the findings ----------------------------------------------------


Pool = tuple[
    npt.NDArray[np.bool_], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]
]


def _pool(n: int = 200, seed: int = 1) -> Pool:
    """Random predictions, truth, portable flags and held-out flags of ``n`` images."""
    rng = np.random.default_rng(seed)
    predicted = rng.random((n, 2)) < 0.3
    truth = (rng.random((n, 2)) < 0.3).astype(np.float64)
    portable = (rng.random(n) < 0.4).astype(np.float64)
    heldout = rng.random(n) < 0.25
    return predicted, truth, portable, heldout


def test_select_images_favours_positives_and_covers_negatives_and_both_sites() -> None:
    """The choice is bounded, seeded, mostly predicted positive, with negatives and portable
    predicted-positive films from training and held-out sites, and never an unexplainable row."""
    predicted, truth, portable, heldout = _pool()
    sel = select_images(predicted, truth, portable, heldout, 40, seed=5)
    again = select_images(predicted, truth, portable, heldout, 40, seed=5)
    np.testing.assert_array_equal(sel.index, again.index)
    assert len(sel.index) == 40 and sel.counts["images"] == 40
    positive = predicted[sel.index].any(axis=1)
    assert positive.sum() >= 0.7 * 40
    assert sel.counts["negative_images"] == int(sel.negative.sum()) >= 6
    films = (portable[sel.index] == 1) & positive
    assert (films & heldout[sel.index]).sum() >= 4 and (films & ~heldout[sel.index]).sum() >= 4
    # every chosen row is predicted positive or a clean negative (nothing predicted, nothing there)
    clean = ~positive & (truth[sel.index] == 0).all(axis=1)
    assert np.all(positive | clean) and np.array_equal(clean, sel.negative)
    other = select_images(predicted, truth, portable, heldout, 40, seed=6)
    assert not np.array_equal(sel.index, other.index)


def test_select_images_fills_from_negatives_when_positives_run_out() -> None:
    """With fewer predicted positives than asked for, the rest are negatives and no more."""
    predicted = np.zeros((10, 1), dtype=bool)
    predicted[:3] = True
    truth = np.zeros((10, 1))
    truth[3] = 1.0  # a false negative: not explainable as either
    sel = select_images(predicted, truth, None, np.zeros(10, dtype=bool), 50, seed=0)
    assert sel.index.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert sel.counts["positive_images"] == 3 and sel.counts["negative_images"] == 6


def test_select_images_refuses_a_non_positive_budget() -> None:
    """max_images 0 is a ValueError, not an empty report."""
    predicted, truth, portable, heldout = _pool(10)
    with pytest.raises(ValueError, match="at least 1"):
        select_images(predicted, truth, portable, heldout, 0, seed=0)


def test_candidate_rows_bounds_the_classifier_pass() -> None:
    """A large table is cut to 4 x max_images sorted, seeded rows; a small one is kept whole."""
    rows = candidate_rows(10_000, 10, seed=3)
    assert len(rows) == 40 and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, candidate_rows(10_000, 10, seed=3))
    np.testing.assert_array_equal(candidate_rows(25, 10, seed=3), np.arange(25))


def test_plan_cases_explains_predicted_findings_and_one_per_negative() -> None:
    """Each predicted finding of a positive image gets a case; negatives cycle over the labels."""
    predicted = np.array([[True, True], [False, False], [False, True], [False, False]])
    negative = np.array([False, True, False, True])
    cases = [(c.image, c.finding, c.positive) for c in plan_cases(predicted, negative)]
    assert cases == [(0, 0, True), (0, 1, True), (1, 0, False), (2, 1, True), (3, 1, False)]


# --- the measures on hand-made maps ----------------------------------------------------------


def test_shortcut_marker_share_is_one_for_a_map_inside_the_label_box() -> None:
    """A map entirely on the PORTABLE label has share 1 there and 0 in the lungs; a map in the
    lungs the reverse; the area share is the box's part of the image."""
    ls = np.stack([_box(0, 2, 0, 2), _box(0, 2, 0, 2), _box(3, 7, 0, 8)])
    gc = np.stack([_box(3, 7, 0, 8)] * 3)
    explained = _explained(ls, gc, image=[0, 1, 2], finding=[0, 1, 0])
    portable = np.array([1.0, 1.0, 0.0])
    heldout = np.array([False, True, False])
    out = shortcut(explained, _regions(3), portable, heldout)
    train, held = out["training_sites"], out["heldout_sites"]
    assert train["n"] == 1 and held["n"] == 1  # image 2 is not a portable film
    for part in (train, held):
        assert part[LATENT_SHIFT]["text_portable"] == pytest.approx(1.0, abs=1e-6)
        assert part[LATENT_SHIFT]["text"] == pytest.approx(1.0, abs=1e-6)
        assert part[LATENT_SHIFT]["lungs"] == pytest.approx(0.0, abs=1e-6)
        assert part[GRADCAM]["text_portable"] == pytest.approx(0.0, abs=1e-6)
        assert part[GRADCAM]["lungs"] == pytest.approx(1.0, abs=1e-6)
        assert part["area"]["text_portable"] == pytest.approx(4 / 64, abs=1e-6)
        assert set(part["area"]) == set(SHORTCUT_REGIONS)


def test_shortcut_spreads_a_coarse_gradcam_map_evenly() -> None:
    """A 2x2 Grad-CAM cell covering the top-left quarter puts 4/16 of its mass on the 2x2 label
    box inside it (mass_shares' even spread, as `triage evaluate`)."""
    gc = np.zeros((1, 2, 2), dtype=np.float32)
    gc[0, 0, 0] = 3.0
    explained = _explained(_box(0, 2, 0, 2)[None], gc, image=[0], finding=[0])
    out = shortcut(explained, _regions(1), np.array([1.0]), np.array([False]))
    assert out["training_sites"][GRADCAM]["text_portable"] == pytest.approx(0.25, abs=1e-6)
    assert math.isnan(out["heldout_sites"][GRADCAM]["text_portable"])


def test_tp_fp_auroc_is_one_when_tps_sit_in_the_region_and_fps_do_not(tmp_path: Path) -> None:
    """TPs' Latent Shift maps in the lungs and FPs' outside give AUROC 1; Grad-CAM the reverse
    gives 0; Cardiomegaly is scored on the heart."""
    lungs, outside = _box(3, 7, 0, 8), _box(0, 2, 0, 8)
    is_tp = [True, True, False, False]
    ls = np.stack([lungs if tp else outside for tp in is_tp])
    gc = np.stack([outside if tp else lungs for tp in is_tp])
    truth = np.array([[0, 1], [0, 1], [0, 0], [0, 0]], dtype=np.float64)
    sops = ("a", "b", "c", "d")
    for sop in sops[:2]:
        _write_masks(tmp_path, sop, Edema=_box(4, 6, 0, 8))
    explained = _explained(ls, gc, image=[0, 1, 2, 3], finding=[1, 1, 1, 1])
    out = tp_fp(explained, LABELS, sops, tmp_path, _regions(4), truth)
    assert out["regions"] == {"Cardiomegaly": "heart", "Edema": "lungs"}
    edema = out["plausible_region"]["Edema"]
    assert edema["n_tp"] == 2 and edema["n_fp"] == 2
    assert edema[LATENT_SHIFT]["auroc"] == pytest.approx(1.0)
    assert edema[GRADCAM]["auroc"] == pytest.approx(0.0)
    assert edema[LATENT_SHIFT]["tp_mean"] == pytest.approx(1.0, abs=1e-6)
    # on the TPs' own masks (half the lungs) the TPs keep half their mass: still above the FPs
    own = out["mask_for_tp"]["Edema"]
    assert own[LATENT_SHIFT]["tp_mean"] == pytest.approx(0.5, abs=1e-6)
    assert own[LATENT_SHIFT]["auroc"] == pytest.approx(1.0)
    assert out["plausible_region"]["all"]["n_tp"] == 2
    assert math.isnan(out["plausible_region"]["Cardiomegaly"][LATENT_SHIFT]["auroc"])


def test_tp_fp_leaves_out_negative_checks_and_unknown_truth(tmp_path: Path) -> None:
    """Negative checks and findings with NaN truth are not judged as TP or FP."""
    maps = np.stack([_box(3, 7, 0, 8)] * 3)
    truth = np.array([[0, 0], [0, math.nan], [0, 1]], dtype=np.float64)
    explained = _explained(
        maps, maps, image=[0, 1, 2], finding=[1, 1, 1], positive=[False, True, True]
    )
    out = tp_fp(explained, LABELS, ("a", "b", "c"), tmp_path, _regions(3), truth)
    assert out["plausible_region"]["Edema"]["n_tp"] == 1
    assert out["plausible_region"]["Edema"]["n_fp"] == 0


def test_localisation_scores_present_and_predicted_findings_only(tmp_path: Path) -> None:
    """A map equal to the finding's mask has IoU 1, one elsewhere 0; negative checks and absent
    findings are not scored."""
    mask = _box(2, 4, 2, 6)
    _write_masks(tmp_path, "a", Edema=mask)
    _write_masks(tmp_path, "b", Edema=mask)
    _write_masks(tmp_path, "c")
    ls = np.stack([mask, mask, mask, mask])
    gc = np.stack([_box(6, 8, 0, 4), mask, mask, mask])
    truth = np.array([[0, 1], [0, 1], [0, 0]], dtype=np.float64)
    explained = _explained(
        ls, gc, image=[0, 1, 2, 1], finding=[1, 1, 1, 1], positive=[True, True, True, False]
    )
    out = localisation(explained, LABELS, ("a", "b", "c"), tmp_path, truth)
    edema = out["Edema"]
    assert edema["n"] == 2
    assert edema[LATENT_SHIFT]["mean"] == pytest.approx(1.0)
    assert edema[GRADCAM]["mean"] == pytest.approx(0.5)
    assert edema["latent_shift_higher"] == pytest.approx(0.5)
    assert out["Cardiomegaly"]["n"] == 0 and out["all"]["n"] == 2


def test_faithfulness_reports_negatives_beside_positives() -> None:
    """Drops and image changes are summarised per role and finding, with stop-rule counts."""
    maps = np.zeros((4, S, S), dtype=np.float32)
    explained = _explained(
        maps,
        maps,
        image=[0, 1, 2, 3],
        finding=[0, 0, 1, 0],
        positive=[True, True, True, False],
        drop=[0.6, 0.2, 0.5, 0.01],
        change=[0.04, 0.02, 0.05, 0.001],
    )
    out = faithfulness(explained, LABELS)
    cardio = out["positive"]["Cardiomegaly"]
    assert cardio["n"] == 2 and cardio["prediction_drop"]["mean"] == pytest.approx(0.4)
    assert cardio["image_change"]["median"] == pytest.approx(0.03)
    assert out["positive"]["all"]["n"] == 3
    assert out["negative"]["Cardiomegaly"]["prediction_drop"]["median"] == pytest.approx(0.01)
    assert out["negative"]["Edema"]["n"] == 0
    assert out["negative"]["all"]["stop_rules"] == {"dropped_by": 1}


def test_load_named_regions_unites_keys_and_area_averages(tmp_path: Path) -> None:
    """A region of two anatomy keys is their union, reduced by area to the model grid; a missing
    anatomy file is a FileNotFoundError naming it."""
    anatomy = tmp_path / "masks" / "anatomy"
    anatomy.mkdir(parents=True)
    keys = {k: np.zeros((16, 16), dtype=bool) for k in ("lungs", "heart", "text_portable")}
    keys["lungs"][:4, :] = True
    keys["heart"][12:, :] = True
    keys["text_portable"][0, 0] = True
    np.savez(anatomy / "s1.npz", **keys)  # type: ignore[arg-type]
    regions = {"both": ("lungs", "heart"), "label": ("text_portable",)}
    out = load_named_regions(tmp_path, ["s1"], 8, regions)
    assert out.shape == (1, 2, 8, 8)
    assert float(out[0, 0].mean()) == pytest.approx(0.5)
    assert float(out[0, 1, 0, 0]) == pytest.approx(0.25)
    with pytest.raises(FileNotFoundError, match=r"s2\.npz"):
        load_named_regions(tmp_path, ["s2"], 8, regions)


# --- the command -----------------------------------------------------------------------------


@pytest.fixture(name="eval_runs", scope="module")
def fixture_eval_runs(
    tmp_path_factory: pytest.TempPathFactory, tiny_phantoms: Path, phantom_bundle: Path
) -> dict[str, Path]:
    """A copy of the phantom bundle and its classifier run, and a two-epoch 64 px autoencoder.

    The random-init classifier's gradient vanishes through its batch-norm statistics, so every
    counterfactual would stop at ``zero_gradient``: the copy's batch-norms are made the identity
    and its head scaled (the manifest's sha256 follows), and the thresholds are set to the median
    probability so that both calls occur.
    """
    import torch

    from explainer.core import load_explainer
    from models.autoencoder import AutoencoderTrainingOptions, train_autoencoder
    from triage_common.bundle_format import sha256_file
    from triage_common.datasets import load_dataset, preprocessed_images

    work = tmp_path_factory.mktemp("evaluate-explanations")
    autoencoder = work / "autoencoder"
    train_autoencoder(
        AutoencoderTrainingOptions(
            data=tiny_phantoms, out=autoencoder, size=64, epochs=2, batch_size=8, max_images=32
        )
    )
    classifier, bundle = work / "classifier", work / "bundle"
    shutil.copytree(
        phantom_bundle.parent / f".{phantom_bundle.name}-runs" / "classifier", classifier
    )
    shutil.copytree(phantom_bundle, bundle)
    state = torch.load(classifier / "classifier.pt", weights_only=True)
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.zero_()
        elif key.endswith("running_var"):
            value.fill_(1.0)
    state["classifier.weight"] *= 30.0
    torch.save(state, classifier / "classifier.pt")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["provenance"]["classifier"]["sha256"] = sha256_file(classifier / "classifier.pt")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    explainer = load_explainer(bundle, classifier, autoencoder)
    table = load_dataset(tiny_phantoms, explainer.labels)
    images = preprocessed_images(table, explainer.spec)
    probs = np.stack([explainer.probabilities(x) for x in images])
    manifest["thresholds"] = {
        label: float(np.median(probs[:, j])) for j, label in enumerate(explainer.labels)
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return {"bundle": bundle, "classifier": classifier, "autoencoder": autoencoder}


def _argv(runs: dict[str, Path], data: Path, out: Path, *extra: str) -> list[str]:
    argv = ["evaluate-explanations", "--bundle", str(runs["bundle"])]
    argv += ["--classifier", str(runs["classifier"]), "--autoencoder", str(runs["autoencoder"])]
    return [*argv, "--data", str(data), "--out", str(out), *extra]


def _finite_in(value: float | None, lo: float, hi: float) -> bool:
    """None (NaN in the report: nothing to measure) or a number within [lo, hi]."""
    return value is None or lo - 1e-9 <= value <= hi + 1e-9


@pytest.mark.slow
def test_evaluate_explanations_writes_a_sane_report(
    eval_runs: dict[str, Path], tiny_phantoms: Path, tmp_path: Path
) -> None:
    """The command explains the chosen images and writes report.json and summary.md with every
    section, counts that add up and shares, IoUs and AUROCs in [0, 1]."""
    out = tmp_path / "report"
    flags = ("--max-images", "10", "--seed", "2", "--max-lambda", "500")
    assert main(_argv(eval_runs, tiny_phantoms, out, *flags)) == 0
    text = (out / "report.json").read_text()
    assert "NaN" not in text  # plain JSON: nothing measurable is null
    report = json.loads(text)
    assert set(report) == {
        "command", "bundle_id", "explainer_id", "data", "settings", "labels", "thresholds",
        "truth", "selection", "localisation", "faithfulness", "shortcut", "tp_fp", "timing",
        "examples",
    }  # fmt: skip
    assert report["examples"]  # the strips the README shows
    for name, example in report["examples"].items():
        assert name in ("true_positive", "shortcut")
        assert Path(example["strip"]).read_bytes().startswith(b"\x89PNG")
        assert Path(example["gif"]).read_bytes().startswith(b"GIF89a")
        assert example["finding"] in report["labels"]
    sel, labels = report["selection"], report["labels"]
    assert sel["images"] <= 10 and sel["images"] == sel["positive_images"] + sel["negative_images"]
    assert sel["negative_checks"] == sel["negative_images"]
    positives = report["faithfulness"]["positive"]["all"]["n"]
    assert positives > 0 and sel["counterfactuals"] == positives + sel["negative_checks"]
    assert report["timing"]["counterfactuals"] == sel["counterfactuals"]
    assert 0 < report["timing"]["median_seconds"] <= report["timing"]["max_seconds"]
    assert report["timing"]["wall_seconds"] >= report["timing"]["total_seconds"]
    assert report["truth"] == "true_labels" and report["settings"]["max_lambda"] == 500
    # the counterfactuals moved: Latent Shift maps have mass, so its shares are measured
    assert report["faithfulness"]["positive"]["all"]["image_change"]["median"] > 0
    assert report["shortcut"]["training_sites"][LATENT_SHIFT]["lungs"] is not None
    for part in report["localisation"].values():
        assert all(_finite_in(part[m][s], 0, 1) for m in (LATENT_SHIFT, GRADCAM)
                   for s in ("mean", "median"))  # fmt: skip
    for role in ("positive", "negative"):
        for part in report["faithfulness"][role].values():
            assert _finite_in(part["image_change"]["median"], 0, 1)
            assert _finite_in(part["prediction_drop"]["median"], -1, 1)
    for part in report["shortcut"].values():
        for key in ("area", LATENT_SHIFT, GRADCAM):
            assert set(part[key]) == set(SHORTCUT_REGIONS)
            assert all(_finite_in(v, 0, 1) for v in part[key].values())
            text = part[key]["text"]
            assert _finite_in(part[key]["text_portable"], 0, 1.0 if text is None else text)
    for variant in ("plausible_region", "mask_for_tp"):
        assert set(report["tp_fp"][variant]) == {"all", *labels}
        for part in report["tp_fp"][variant].values():
            assert all(_finite_in(part[m]["auroc"], 0, 1) for m in (LATENT_SHIFT, GRADCAM))
    summary = (out / "summary.md").read_text()
    assert "## Localisation" in summary and "## Timing" in summary


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--max-images", "0"), "--max-images"),
        (("--threads", "0"), "--threads"),
        (("--frames", "1"), "frames"),
        ((), "manifest.json is missing"),
    ],
)
def test_evaluate_explanations_refuses_bad_flags(
    tiny_phantoms: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    message: str,
) -> None:
    """A bad flag or a folder that is not a bundle exits 2 with a one-line message, writing
    nothing."""
    runs = {name: tmp_path / name for name in ("bundle", "classifier", "autoencoder")}
    out = tmp_path / "out"
    assert main(_argv(runs, tiny_phantoms, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_evaluate_explanations_refuses_data_without_masks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder without anatomy masks (not a phantom folder) exits 2 naming what is missing."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "labels.csv").write_text("path\n")
    runs = {name: tmp_path / name for name in ("bundle", "classifier", "autoencoder")}
    assert main(_argv(runs, data, tmp_path / "out")) == 2
    assert "masks/anatomy" in capsys.readouterr().err


def test_localisation_does_not_score_a_map_without_mass(tmp_path: Path) -> None:
    """A counterfactual that did not move (all-zero attribution) gets no IoU, not a tie-broken
    one; Grad-CAM's map of the same case is still scored."""
    mask = _box(0, 2, 0, 2)
    _write_masks(tmp_path, "a", Edema=mask)
    explained = _explained(np.zeros((1, S, S), np.float32), mask[None], image=[0], finding=[1])
    out = localisation(explained, LABELS, ("a",), tmp_path, np.array([[0.0, 1.0]]))
    assert out["Edema"][LATENT_SHIFT]["n"] == 0 and out["Edema"]["n"] == 0
    assert out["Edema"][GRADCAM]["mean"] == pytest.approx(1.0)
