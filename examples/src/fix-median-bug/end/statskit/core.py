"""Mean and median of a sequence of numbers."""


def mean(values):
    """The arithmetic mean; ValueError for an empty sequence."""
    values = list(values)
    if not values:
        raise ValueError("mean of an empty sequence")
    return sum(values) / len(values)


def median(values):
    """The middle value of the sorted sequence (the mean of the two middle values for an even
    length); ValueError for an empty sequence."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of an empty sequence")
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2
