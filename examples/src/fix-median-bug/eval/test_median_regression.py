import pytest

from statskit import mean, median


def test_odd_length_unchanged():
    assert median([5, 1, 3]) == 3
    assert median([2]) == 2


def test_empty_still_raises():
    with pytest.raises(ValueError):
        median([])


def test_mean_unchanged():
    assert mean([1, 2, 3, 4]) == 2.5
