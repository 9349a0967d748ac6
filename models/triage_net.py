"""The served graph: classifier (+ in-graph Grad-CAM) -> OOD score -> error model, in one module.

``TriageNet`` maps a preprocessed batch (B, C, S, S) to the five tensors the service needs, and it
is what ``triage export onnx`` serialises.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.densenet import DenseNet
from models.error_model import ErrorModel
from models.ood import MahalanobisOOD


class TriageNet(nn.Module):
    """image -> probabilities [B,L], cams [B,L,h,w], ood_score [B], p_error [B],
    p_error_labels [B,L]."""

    def __init__(self, classifier: DenseNet, ood: MahalanobisOOD, error_model: ErrorModel) -> None:
        super().__init__()
        self.classifier = classifier
        self.ood = ood
        self.error_model = error_model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        logits, cams, pooled = self.classifier(image)
        probs = torch.sigmoid(logits)
        error_logits = self.error_model(probs, cams)
        p_error_all = torch.sigmoid(error_logits)
        return probs, cams, self.ood(pooled), p_error_all[:, 0], p_error_all[:, 1:]
