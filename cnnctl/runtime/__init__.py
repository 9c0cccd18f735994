"""The torch-free run-time layer: model-file metadata, preprocessing, the Classifier protocol and the ONNX runner.

Nothing here imports torch (tests/runtime/test_torch_free.py proves it): `cnnctl predict`, `cnnctl serve`
and `cnnctl --help` start without it."""
