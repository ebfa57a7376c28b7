from statskit import median


def test_even_length_is_mean_of_middle_values():
    assert median([1, 2, 3, 4]) == 2.5
    assert median([4, 1, 3, 2]) == 2.5
    assert median([10, 20]) == 15


def test_even_length_with_floats_and_negatives():
    assert median([-1.5, 0.5]) == -0.5
    assert median([7, -3, 2, 2]) == 2
