"""One loaded explainer: the served classifier and the autoencoder, checked against the bundle.

:class:`Explainer` explains one model input (the bundle's canonical preprocessing, the array the
served classifier read) for a list of findings with :func:`models.latent_shift.latent_shift`.
The counterfactual runs in display units ([0, 1], the preprocessing undone): the encoder and the
classifier are given ``(d - mean) / std`` and the decoder's output is turned back, so the
search's image-change rule (a share of the image's mass) means the same for any normalisation,
and the frames are images a reader can look at.

The classifier must be the one the bundle serves (the sha256 of ``classifier.pt`` is the one the
bundle's manifest records) and both models must read the bundle's input size: otherwise
:class:`ExplainerMismatch` says which.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from models.autoencoder import AutoencoderRun, load_autoencoder_run
from models.latent_shift import ClassifierProbability, LatentShiftSettings, StopRule, latent_shift
from models.runs import ClassifierRun, load_classifier_run
from triage_common.bundle_format import sha256_file
from triage_common.preprocess import PreprocessSpec

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

METHOD = "latent_shift"


class ExplainerMismatch(ValueError):
    """The classifier or autoencoder does not belong with the bundle."""


@dataclass(frozen=True)
class FindingExplanation:
    """The counterfactual of one finding, as numpy arrays in display units."""

    label: str
    probability: float  # the classifier on the input itself
    frames: F32  # (F, S, S), frames[0] = D(E(x))
    lambdas: F64  # (F,)
    predictions: F64  # (F,) the finding's probability on each frame
    attribution: F32  # (S, S) mean |frames[i+1] - frames[i]|
    lambda_reached: float
    prediction_drop: float
    stop_rule: StopRule
    image_change: float
    search_steps: int
    seconds: float


def weights_digest(model: torch.nn.Module) -> str:
    """A sha256 prefix over the parameter names and values: the same for the same weights
    whatever file they were saved in (``torch.save``'s archive names the file it wrote)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Explainer:
    """The classifier and autoencoder of one bundle, ready to explain (eval mode, no grads)."""

    def __init__(
        self,
        classifier: ClassifierRun,
        autoencoder: AutoencoderRun,
        *,
        bundle_id: str,
        spec: PreprocessSpec,
        explainer_id: str,
        settings: LatentShiftSettings | None = None,
    ) -> None:
        self.classifier = classifier
        self.autoencoder = autoencoder
        self.bundle_id = bundle_id
        self.spec = spec
        self.explainer_id = explainer_id
        self.settings = settings or LatentShiftSettings()
        self.labels = classifier.labels
        ae = autoencoder.spec
        cls = classifier.spec

        def encode(d: Tensor) -> Tensor:
            return autoencoder.model.encode((d - ae.mean) / ae.std)

        def decode(z: Tensor) -> Tensor:
            return autoencoder.model.decode(z) * ae.std + ae.mean

        def logits(d: Tensor) -> Tensor:
            out: Tensor = classifier.model.logits((d - cls.mean) / cls.std)
            return out

        self._encode, self._decode, self._logits = encode, decode, logits

    def display(self, model_input: F32) -> F32:
        """The model input ``(1, S, S)`` (bundle preprocessing) back in display units."""
        out: F32 = (np.asarray(model_input, np.float32) * self.spec.std + self.spec.mean).astype(
            np.float32
        )
        return out

    @torch.no_grad()
    def probabilities(self, model_input: F32) -> F64:
        """The classifier's probabilities for one model input ``(1, S, S)``."""
        x = torch.as_tensor(self.display(model_input))[None]
        out: F64 = torch.sigmoid(self._logits(x))[0].double().numpy()
        return out

    def explain(self, model_input: F32, labels: Sequence[str]) -> list[FindingExplanation]:
        """The counterfactual of each of ``labels`` for one model input ``(1, S, S)``."""
        unknown = [label for label in labels if label not in self.labels]
        if unknown:
            raise ExplainerMismatch(f"the classifier has no label(s) {unknown}: {self.labels}")
        image = np.asarray(model_input, dtype=np.float32)
        if image.shape != (1, self.spec.size, self.spec.size):
            raise ExplainerMismatch(
                f"the model input is {image.shape}, the bundle reads (1, {self.spec.size}, "
                f"{self.spec.size})"
            )
        probabilities = self.probabilities(image)
        d = torch.as_tensor(self.display(image))
        out = []
        for label in labels:
            k = self.labels.index(label)
            start = time.perf_counter()
            cf = latent_shift(
                d, self._encode, self._decode, ClassifierProbability(self._logits, k), self.settings
            )
            out.append(
                FindingExplanation(
                    label=label,
                    probability=float(probabilities[k]),
                    frames=cf.frames[:, 0].float().numpy(),
                    lambdas=cf.lambdas.double().numpy(),
                    predictions=cf.predictions.double().numpy(),
                    attribution=cf.attribution[0].float().numpy(),
                    lambda_reached=cf.lambda_reached,
                    prediction_drop=cf.prediction_drop,
                    stop_rule=cf.stop_rule,
                    image_change=cf.image_change,
                    search_steps=cf.search_steps,
                    seconds=time.perf_counter() - start,
                )
            )
        return out


def load_explainer(
    bundle: Path,
    classifier: Path,
    autoencoder: Path,
    settings: LatentShiftSettings | None = None,
) -> Explainer:
    """Load and cross-check the bundle's manifest, the classifier run and the autoencoder run."""
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} is missing: is {bundle} a model bundle?")
    manifest = json.loads(manifest_path.read_text())
    cls = load_classifier_run(classifier)
    ae = load_autoencoder_run(autoencoder)
    recorded = manifest.get("provenance", {}).get("classifier", {}).get("sha256")
    digest = sha256_file(classifier / "classifier.pt")
    if recorded != digest:
        raise ExplainerMismatch(
            f"{classifier}/classifier.pt (sha256 {digest[:16]}) is not the classifier bundle "
            f"{manifest.get('bundle_id')} serves (sha256 {str(recorded)[:16]})"
        )
    spec = PreprocessSpec.from_dict(manifest["preprocess"])
    if cls.spec.size != spec.size or ae.spec.size != spec.size:
        raise ExplainerMismatch(
            f"input sizes differ: bundle {spec.size}, classifier {cls.spec.size}, autoencoder "
            f"{ae.spec.size} (train the autoencoder with --size {spec.size})"
        )
    if cls.spec != spec:  # the bundle's model inputs are fed to the classifier as they are
        raise ExplainerMismatch(
            f"preprocessing differs: bundle {spec.to_dict()}, classifier {cls.spec.to_dict()}"
        )
    return Explainer(
        cls,
        ae,
        bundle_id=str(manifest["bundle_id"]),
        spec=spec,
        explainer_id=weights_digest(ae.model),
        settings=settings,
    )
