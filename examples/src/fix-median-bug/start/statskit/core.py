"""Mean and median of a sequence of numbers."""


def mean(values):
    """The arithmetic mean; ValueError for an empty sequence."""
    values = list(values)
    if not values:
        raise ValueError("mean of an empty sequence")
    return sum(values) / len(values)


def median(values):
    """The middle value of the sorted sequence; ValueError for an empty sequence."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of an empty sequence")
    return ordered[len(ordered) // 2]
