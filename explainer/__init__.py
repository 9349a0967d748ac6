"""The counterfactual explainer: Latent Shift explanations of deferred studies, off the request
path.

Train time (torch). ``triage explain-worker`` takes the explanation jobs the service queues with
deferred results (:mod:`service.worklist.explanations`), ``triage explain`` explains DICOM files
from the command line, ``triage evaluate-explanations`` measures Latent Shift beside Grad-CAM.
Imports ``models``, ``service`` (the store, the wire messages, the DICOM writers) and
``triage_common``; nothing imports it.
"""
