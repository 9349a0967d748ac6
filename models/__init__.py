"""Train-time code: phantoms, DenseNet-121 with in-graph Grad-CAM, the error model, training."""
