"""PyTorch -> ONNX / TensorRT / Triton export, parity checks and the model bundle manifest."""
