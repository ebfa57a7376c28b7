import pytest

from statskit import mean, median


def test_mean():
    assert mean([1, 2, 3, 4]) == 2.5


def test_median_of_odd_length():
    assert median([5, 1, 3]) == 3


def test_empty_raises():
    with pytest.raises(ValueError):
        median([])
