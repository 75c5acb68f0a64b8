"""The benchmarks' CSV writer."""

import csv

import pytest

from sparseforge.profile.rows import write_csv


def test_rows_round_trip_through_csv_in_a_new_folder(tmp_path):
    path = write_csv([{"shape": "4096x4096", "ms": 1.5}, {"shape": "768x3072", "ms": 0.25}], tmp_path / "new" / "r.csv")
    with path.open() as f:
        assert list(csv.DictReader(f)) == [{"shape": "4096x4096", "ms": "1.5"}, {"shape": "768x3072", "ms": "0.25"}]
    with pytest.raises(ValueError, match="no rows"):
        write_csv([], tmp_path / "empty.csv")
