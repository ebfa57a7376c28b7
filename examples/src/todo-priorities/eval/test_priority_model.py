import pytest

from todo.model import Item


def test_default_priority_is_normal():
    assert Item("x").priority == 2


def test_priority_in_dict_and_back():
    item = Item("x", priority=1)
    assert item.to_dict()["priority"] == 1
    assert Item.from_dict(item.to_dict()) == item


def test_old_records_get_normal_priority():
    assert Item.from_dict({"title": "old", "done": True}).priority == 2


def test_invalid_priority_rejected():
    with pytest.raises(ValueError):
        Item("x", priority=7)
