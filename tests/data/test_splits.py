import pytest
import torch

from sparseforge.data import DATASETS, DatasetSplits, SplitOptions, load_dataset, make_splits


def indexed_images(n: int, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images whose first pixel is their index, labels cycling over 3 classes."""
    images = torch.randint(0, 256, (n, channels, 4, 4), generator=torch.Generator().manual_seed(1))
    images = images.to(torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return images, torch.arange(n) % 3


def original_index(splits: DatasetSplits, x: torch.Tensor) -> list[int]:
    pixel = x[:, 0, 0, 0] * splits.std[0] + splits.mean[0]
    return torch.round(pixel * 255).long().tolist()


def split(n: int = 100, **kwargs) -> DatasetSplits:
    train_x, train_y = indexed_images(n)
    test_x, test_y = indexed_images(10)
    return make_splits(train_x, train_y, test_x, test_y, ["a", "b", "c"], SplitOptions(**kwargs))


def test_registered_names() -> None:
    assert {"fashion_mnist", "image_folder", "cifar10"} <= set(DATASETS.names())


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(KeyError, match="fashion_mnist"):
        load_dataset("mnist_typo")


def test_val_split_is_disjoint_covering_and_sized() -> None:
    s = split(100, val_fraction=0.2)
    train = original_index(s, s.train.tensors[0])
    val = original_index(s, s.val.tensors[0])
    assert len(train) == 80 and len(val) == 20
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == list(range(100))
    # labels travel with their images
    assert s.val.tensors[1].tolist() == [i % 3 for i in val]


def test_split_is_deterministic_and_depends_on_seed() -> None:
    a, b = split(split_seed=3), split(split_seed=3)
    for part in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, part).tensors, getattr(b, part).tensors, strict=True):
            assert torch.equal(ta, tb)
    c = split(split_seed=4)
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])


def test_zero_val_fraction_gives_empty_val() -> None:
    s = split(50, val_fraction=0.0)
    assert len(s.train) == 50
    assert s.val.tensors[0].shape == (0, 1, 4, 4)
    assert s.val.tensors[1].dtype == torch.int64


def test_normalization_uses_train_statistics_only() -> None:
    train_x, train_y = indexed_images(40)
    test_x = torch.full((5, 1, 4, 4), 255, dtype=torch.uint8)
    s = make_splits(train_x, train_y, test_x, torch.zeros(5, dtype=torch.long), ["a", "b", "c"])
    x = s.train.tensors[0]
    assert x.dtype == torch.float32 and s.train.tensors[1].dtype == torch.int64
    assert abs(x.mean().item()) < 1e-5
    assert abs(x.std(unbiased=False).item() - 1) < 1e-4
    expected = (1.0 - s.mean[0]) / s.std[0]
    assert torch.allclose(s.test.tensors[0], torch.full_like(s.test.tensors[0], expected))


def test_per_channel_statistics() -> None:
    images = torch.zeros(8, 3, 2, 2, dtype=torch.uint8)
    images[:, 1] = 255
    images[::2, 2] = 255
    labels = torch.zeros(8, dtype=torch.long)
    s = make_splits(images, labels, images, labels, ["a"], SplitOptions(val_fraction=0.0))
    assert s.mean == pytest.approx((0.0, 1.0, 0.5))
    assert s.std == pytest.approx((1.0, 1.0, 0.5))  # constant channels keep std 1


def test_limit_caps_every_split() -> None:
    s = split(100, val_fraction=0.2, limit=7)
    assert (len(s.train), len(s.val), len(s.test)) == (7, 7, 7)


def test_channels_and_image_size() -> None:
    s = split(20, channels=3, image_size=9)
    assert s.input_shape == (3, 9, 9)
    x = s.train.tensors[0]
    assert x.shape[1:] == (3, 9, 9)
    raw = x * torch.tensor(s.std).view(1, 3, 1, 1) + torch.tensor(s.mean).view(1, 3, 1, 1)
    assert torch.allclose(raw[:, 0], raw[:, 2], atol=1e-5)


def test_rgb_to_gray_uses_luma() -> None:
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[:, 1] = 255  # pure green
    images[0] = 0
    labels = torch.zeros(4, dtype=torch.long)
    s = make_splits(images, labels, images, labels, ["a"], SplitOptions(val_fraction=0.0, channels=1))
    raw = s.test.tensors[0] * s.std[0] + s.mean[0]
    assert raw.shape == (4, 1, 2, 2)
    assert raw[1].flatten().tolist() == pytest.approx([0.587] * 4, abs=1e-5)
    assert raw[0].flatten().tolist() == pytest.approx([0.0] * 4, abs=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"limit": 0}, "limit"),
        ({"channels": 2}, "channels"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_bad_options_are_explained(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split(20, **kwargs)


def test_out_of_range_labels_are_rejected() -> None:
    x, _ = indexed_images(4)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        make_splits(
            x, torch.tensor([0, 1, 2, 3]), x, torch.zeros(4, dtype=torch.long), ["a", "b", "c"]
        )
