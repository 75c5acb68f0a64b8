import pytest

from sparseforge.report import fmt


@pytest.mark.parametrize(
    ("fn", "value", "text"),
    [
        (fmt.count, 288, "288"),
        (fmt.count, 1000, "1,000"),
        (fmt.count, 12_345, "12.3 k"),
        (fmt.count, 1_200_000, "1.2 M"),
        (fmt.flops, 500, "500 FLOPs"),
        (fmt.flops, 3.4e6, "3.4 MFLOPs"),
        (fmt.flops, 2.5e9, "2.5 GFLOPs"),
        (fmt.nbytes, 900, "900 B"),
        (fmt.nbytes, 4000, "4.0 kB"),
        (fmt.nbytes, 1_500_000, "1.5 MB"),
        (fmt.nbytes, 999_999, "1.0 MB"),
        (fmt.percent, 0.896, "89.6%"),
        (fmt.points, -0.006, "-0.6 pp"),
        (fmt.ms, 0.05, "0.050"),
        (fmt.ms, 8.0, "8.00"),
        (fmt.ms, 123.45, "123.5"),
        (fmt.ratio, 0.1, "0.10×"),
    ],
)
def test_formats(fn, value, text):
    assert fn(value) == text


@pytest.mark.parametrize("fn", [fmt.count, fmt.flops, fmt.nbytes, fmt.percent, fmt.ms, fmt.ratio])
def test_none_is_a_dash(fn):
    assert fn(None) == fmt.DASH
