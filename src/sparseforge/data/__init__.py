"""Datasets as normalized tensors split into train/val/test, plus batch augmentation.
Importing this package registers the built-in datasets in `DATASETS`."""

from sparseforge.data import cifar, fashion_mnist, image_folder  # noqa: F401  (registers loaders)
from sparseforge.data.augment import augment_batch
from sparseforge.data.cifar import CIFAR10_CLASSES
from sparseforge.data.fashion_mnist import FASHION_MNIST_CLASSES
from sparseforge.data.splits import DATASETS, DatasetSplits, SplitOptions, load_dataset, make_splits

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "DatasetSplits",
    "SplitOptions",
    "augment_batch",
    "load_dataset",
    "make_splits",
]
