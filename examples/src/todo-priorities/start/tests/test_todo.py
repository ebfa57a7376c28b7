import io

from todo import cli, storage
from todo.model import Item


def test_roundtrip(tmp_path):
    path = str(tmp_path / "todo.json")
    storage.save([Item("a"), Item("b", done=True)], path)
    assert storage.load(path) == [Item("a"), Item("b", done=True)]


def test_add_and_list(tmp_path):
    path = str(tmp_path / "todo.json")
    cli.main(["--file", path, "add", "first"])
    out = io.StringIO()
    cli.main(["--file", path, "list"], out=out)
    assert "first" in out.getvalue()
