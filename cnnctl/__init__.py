"""cnnctl: train, check and ship convolutional image classifiers from the command line.

Importing the package is cheap: it pulls in no torch. Heavy modules are imported lazily by
the subcommand that needs them, so `cnnctl --help` and `cnnctl predict model.onnx` start fast.
"""

__version__ = "0.1.0"
