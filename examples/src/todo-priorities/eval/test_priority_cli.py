import io

from todo import cli


def run(path, *args):
    out = io.StringIO()
    assert cli.main(["--file", path] + list(args), out=out) in (0, None)
    return out.getvalue()


def test_add_with_priority_and_list_orders_by_priority(tmp_path):
    path = str(tmp_path / "todo.json")
    run(path, "add", "low one", "--priority", "3")
    run(path, "add", "normal one")
    run(path, "add", "--priority", "1", "urgent one")
    lines = [l for l in run(path, "list").splitlines() if l.strip()]
    titles = [next(t for t in ("urgent one", "normal one", "low one") if t in l) for l in lines]
    assert titles == ["urgent one", "normal one", "low one"]


def test_list_shows_priority(tmp_path):
    path = str(tmp_path / "todo.json")
    run(path, "add", "--priority", "1", "urgent one")
    assert "P1" in run(path, "list")
