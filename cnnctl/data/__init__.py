"""Data sources, preprocessing, caching and in-memory batching.

`build(cfg)` returns a `DataBundle`: uint8 tensors for train / val / test held in memory, the
class names, and the `Preprocess` (with train-split mean/std) that travels with the checkpoint.
"""

from cnnctl.data.bundle import DataBundle, Split, build

__all__ = ["DataBundle", "Split", "build"]
