"""A folder of images, one subfolder per class (`root/<class>/<file>.png`), optionally already
split into `root/train` and `root/test`; lets users bring their own data without writing code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from sparseforge.data.splits import (
    DATASETS,
    DatasetSplits,
    Root,
    SplitOptions,
    make_splits,
    seeded_permutation,
    split_count,
)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
GRAY_MODES = frozenset({"1", "L", "LA"})
# The held-out test set must not move when the user varies split_seed, so it has its own seed.
TEST_SPLIT_SEED = 0

Example = tuple[Path, int]


def list_classes(folder: Path) -> list[str]:
    """Sorted names of the (non-hidden) subfolders of `folder`; each is a class."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(
            f"{folder} has no class subfolders; lay images out as {folder}/<class>/<image>.png"
        )
    return classes


def list_examples(folder: Path, classes: list[str]) -> list[Example]:
    """(image path, class index) for every image under `folder/<class>/`, in sorted order."""
    examples: list[Example] = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        files = sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise ValueError(
                f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "add images or remove the folder"
            )
        examples.extend((p, label) for p in files)
    return examples


def _probe(path: Path) -> tuple[str, tuple[int, int]]:
    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}; fix or remove the file") from err


def _decode(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            array = np.array(im.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot decode image {path}: {err}; fix or remove the file") from err
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read_images(
    paths: list[Path], channels: int, image_size: int | None, same_size: bool
) -> Tensor:
    """Decode images to (N, C, H, W): uint8 when all share a size, else float resized per image."""
    mode = "L" if channels == 1 else "RGB"
    if same_size:
        return torch.from_numpy(np.stack([_decode(p, mode) for p in paths]))
    assert image_size is not None
    out = torch.empty((len(paths), channels, image_size, image_size))
    for i, p in enumerate(paths):
        x = torch.from_numpy(_decode(p, mode)).float().div_(255.0).unsqueeze(0)
        out[i] = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )[0].clamp_(0.0, 1.0)
    return out


def resolve_layout(
    root: Path, test_fraction: float
) -> tuple[list[str], list[Example], list[Example]]:
    """Classes and (train, test) examples: from root/train + root/test, or carved from root."""
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        have, missing = (train_dir, test_dir) if train_dir.is_dir() else (test_dir, train_dir)
        raise ValueError(
            f"found {have} but not {missing}; provide both, or put class folders directly in {root}"
        )
    if train_dir.is_dir():
        classes = list_classes(train_dir)
        test_classes = list_classes(test_dir)
        if test_classes != classes:
            only_train = sorted(set(classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(classes))
            raise ValueError(
                f"{train_dir} and {test_dir} must have the same class folders; "
                f"only in train: {only_train}, only in test: {only_test}"
            )
        test = list_examples(test_dir, classes)
        order = seeded_permutation(len(test), TEST_SPLIT_SEED).tolist()  # mixed classes for limit
        return classes, list_examples(train_dir, classes), [test[i] for i in order]

    classes = list_classes(root)
    examples = list_examples(root, classes)
    if test_fraction <= 0:
        raise ValueError(
            f"{root} has no train/test subfolders, so a test split is carved from it: "
            f"test_fraction must be in (0, 1), got {test_fraction}"
        )
    n_test = max(1, split_count(len(examples), test_fraction, "test_fraction"))
    if n_test >= len(examples):
        raise ValueError(
            f"{root} has only {len(examples)} images, too few to carve a test split; add images"
        )
    perm = seeded_permutation(len(examples), TEST_SPLIT_SEED).tolist()
    return (
        classes,
        [examples[i] for i in perm[n_test:]],
        [examples[i] for i in perm[:n_test]],
    )


@DATASETS.register("image_folder")
def load_image_folder(root: Root, options: SplitOptions) -> DatasetSplits:
    """Images under root/<class>/ (png, jpg, jpeg, bmp); channels default to 1 if every image is
    grayscale, else 3. Images of different sizes need `image_size`."""
    if root is None:
        raise ValueError(
            "image_folder needs data.root: a folder laid out as <root>/<class>/<image>"
        )
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist; set data.root")
    channels, image_size = options.channels, options.image_size
    if channels not in (None, 1, 3):
        raise ValueError(f"data.channels must be 1 or 3, got {channels}")

    classes, train, test = resolve_layout(folder, options.test_fraction)
    probes = [_probe(p) for p, _ in train + test]
    if channels is None:
        channels = 1 if all(mode in GRAY_MODES for mode, _ in probes) else 3
    sizes = {size for _, size in probes}
    if len(sizes) > 1 and image_size is None:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:5])
        raise ValueError(
            f"images under {folder} differ in size ({shown}); set data.image_size to resize them"
        )

    def tensors(examples: list[Example]) -> tuple[Tensor, Tensor]:
        images = read_images([p for p, _ in examples], channels, image_size, len(sizes) == 1)
        return images, torch.tensor([label for _, label in examples], dtype=torch.long)

    train_x, train_y = tensors(train)
    test_x, test_y = tensors(test)
    return make_splits(
        train_x,
        train_y,
        test_x,
        test_y,
        classes,
        options,
    )
