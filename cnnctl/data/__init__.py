"""Data sources, the split manifest, decoding and caching, and batching.

`bundle.build(data_config)` returns a `DataBundle`: uint8 images for train / val / test (in memory
or memory-mapped), the class names, and the `Preprocess` (with train-split mean/std) that travels
with the checkpoint. This package imports nothing by itself: `data.layout` and `data.manifest` are
torch-free, so `cnnctl check` (without --labels) and `--help` never load torch.
"""
