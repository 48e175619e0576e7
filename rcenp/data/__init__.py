"""Data for rcenp: MNIST, Fashion-MNIST and CIFAR-10 from their canonical files.

    from rcenp.data import load
    train = load("cifar10", "train")      # Dataset: images (N, 3, 32, 32) float32, labels (N,) int64
    print(train.describe())               # says whether this is the full set or a subset

Images are scaled ``x/255 - 0.5`` into [-0.5, 0.5]. ``rcenp.data.fetch.fetch`` downloads the
published files (imported on its own, so that loading never imports urllib);
:func:`load_sample` reads the embedded 1,000-image MNIST sample. :func:`read_image` reads one image
file (any Pillow mode, 16-bit in full) and :func:`write_png16` writes one as a 16-bit PNG.
"""
from __future__ import annotations

from .augment import BatchStream, augment_cifar
from .datasets import DATASETS, Dataset, data_root, find_test_split, load, load_sample
from .errors import DataError
from .images import read_image, write_png16

__all__ = [
    "DATASETS",
    "BatchStream",
    "DataError",
    "Dataset",
    "augment_cifar",
    "data_root",
    "find_test_split",
    "load",
    "load_sample",
    "read_image",
    "write_png16",
]
