"""The served graph and the evaluation graphs, one module each.

``TriageNet`` maps a preprocessed batch (B, C, S, S) to the five tensors the service needs
(``triage_common.bundle_format.OUTPUTS``), and it is what ``triage export onnx`` serialises as
``triage.onnx``. Its error model is the one the error-model run chose to serve (the Grad-CAM
error model, the probabilities-only network of the same head or the image-only direct
predictor, whichever validated best);
its OOD score is the multi-layer guard's when the run has one.

``EvaluationNet`` (``evaluation.onnx``, never served) gives ``triage evaluate`` every baseline on
the same images: the Grad-CAM error model, the probabilities-only network and the image-only
direct predictor, the single-layer OOD distance and the multi-layer guard's parts.
``ErrorHeadNet`` (``error_head.onnx``) is the Grad-CAM error model alone, (probabilities, CAMs)
-> P(error), so that maps can be permuted among studies for the ablation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.densenet import DenseNet
from models.error_model import DirectErrorModel, ErrorModel
from models.ood import MahalanobisOOD, MultiLayerOOD, image_statistics

#: Output names of the evaluation graph, in order.
EVALUATION_OUTPUTS = (
    "probabilities",
    "cams",
    "p_error_gradcam",
    "p_error_probs_only",
    "p_error_direct",
    "ood_single",
    "ood_multi",
    "ood_components",
)
ERROR_HEAD_INPUTS = ("probabilities", "cams")
ERROR_HEAD_OUTPUT = "p_error_gradcam"


def guard_features(classifier: DenseNet, image: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``(norm5 output, pooled features, multi-layer guard features)`` for a batch: the global
    average of every dense block but the last, the pooled features, the image statistics."""
    z, taps = classifier.features_with_taps(image)
    pooled = classifier.relu(z).mean(dim=(2, 3))
    features = [t.mean(dim=(2, 3)) for t in taps[:-1]] + [pooled, image_statistics(image)]
    return z, pooled, features


class TriageNet(nn.Module):
    """image -> probabilities [B,L], cams [B,L,h,w], ood_score [B], p_error [B],
    p_error_labels [B,L]."""

    def __init__(
        self,
        classifier: DenseNet,
        ood: MahalanobisOOD,
        error_model: ErrorModel | DirectErrorModel,
        multi_ood: MultiLayerOOD | None = None,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.ood = ood
        self.error_model = error_model
        self.multi_ood = multi_ood

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        if self.multi_ood is None:
            logits, cams, pooled = self.classifier(image)
            ood_score = self.ood(pooled)
        else:
            z, _, features = guard_features(self.classifier, image)
            logits, cams, pooled = self.classifier.head(z)
            ood_score, _ = self.multi_ood(features)
        probs = torch.sigmoid(logits)
        if isinstance(self.error_model, DirectErrorModel):
            error_logits = self.error_model(pooled)
        else:
            error_logits = self.error_model(probs, cams)
        p_error_all = torch.sigmoid(error_logits)
        return probs, cams, ood_score, p_error_all[:, 0], p_error_all[:, 1:]


class EvaluationNet(nn.Module):
    """image -> the outputs of :data:`EVALUATION_OUTPUTS` (every baseline on one pass)."""

    def __init__(
        self,
        classifier: DenseNet,
        ood: MahalanobisOOD,
        multi_ood: MultiLayerOOD,
        gradcam: ErrorModel,
        probs_only: ErrorModel,
        direct: DirectErrorModel,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.ood = ood
        self.multi_ood = multi_ood
        self.gradcam = gradcam
        self.probs_only = probs_only
        self.direct = direct

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        z, pooled, features = guard_features(self.classifier, image)
        logits, cams, _ = self.classifier.head(z)
        probs = torch.sigmoid(logits)
        multi, parts = self.multi_ood(features)
        return (
            probs,
            cams,
            torch.sigmoid(self.gradcam(probs, cams)[:, 0]),
            torch.sigmoid(self.probs_only(probs, cams)[:, 0]),
            torch.sigmoid(self.direct(pooled)[:, 0]),
            self.ood(pooled),
            multi,
            parts,
        )


class ErrorHeadNet(nn.Module):
    """(probabilities [B,L], cams [B,L,h,w]) -> the Grad-CAM error model's P(error) [B]."""

    def __init__(self, gradcam: ErrorModel) -> None:
        super().__init__()
        self.gradcam = gradcam

    def forward(self, probs: Tensor, cams: Tensor) -> Tensor:
        return torch.sigmoid(self.gradcam(probs, cams)[:, 0])
