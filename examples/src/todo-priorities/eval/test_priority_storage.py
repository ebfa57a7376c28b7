import json

from todo import storage
from todo.model import Item


def test_priorities_survive_save_and_load(tmp_path):
    path = str(tmp_path / "todo.json")
    items = [Item("a", priority=3), Item("b", priority=1), Item("c")]
    storage.save(items, path)
    assert [i.priority for i in storage.load(path)] == [3, 1, 2]


def test_file_without_priorities_loads(tmp_path):
    path = tmp_path / "todo.json"
    path.write_text(json.dumps([{"title": "old", "done": False}]))
    assert storage.load(str(path))[0].priority == 2
