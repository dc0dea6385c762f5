"""Stage 3, TensorRT: a bundle's ONNX variant → an engine plan in the bundle (TensorRT 10, or TensorRT-RTX ahead of
time on a CPU-only machine), with its profiles, lint, memory estimate and trtexec line."""
