import io

from todo import cli


def run(path, *args):
    out = io.StringIO()
    assert cli.main(["--file", path] + list(args), out=out) in (0, None)
    return out.getvalue()


def test_add_list_done_still_work(tmp_path):
    path = str(tmp_path / "todo.json")
    run(path, "add", "first")
    run(path, "add", "second")
    run(path, "done", "1")
    listing = run(path, "list")
    assert "first" in listing and "second" in listing
    first = next(l for l in listing.splitlines() if "first" in l)
    assert "[x]" in first
