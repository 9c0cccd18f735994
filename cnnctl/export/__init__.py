"""Deployment files: ONNX (float, int8, fp16, uint8 input) and Triton model repositories."""
