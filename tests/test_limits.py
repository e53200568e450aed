"""Inputs too large for memory are refused up front, with the size and what would work."""

import pytest

from gradfit.errors import DataError
from gradfit.limits import available_memory, check_table_fits


def test_a_table_larger_than_memory_is_refused_with_sizes(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"x,y\n" + b"1,2\n" * 300_000)  # 1.2 MB on disk
    check_table_fits(path, available=1 << 30)
    with pytest.raises(DataError, match=r"big.csv is 0.0 GiB on disk .* only 0.0 GiB is available — fit it in parts"):
        check_table_fits(path, available=1 << 20)


def test_available_memory_is_positive():
    assert available_memory() > 0
