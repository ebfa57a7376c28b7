import yaml

from appconfig import DEFAULTS, load_config


def test_yaml_file(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump({"name": "demo", "debug": True}))
    cfg = load_config(str(path))
    assert cfg["name"] == "demo" and cfg["debug"] is True
    assert cfg["log"] == DEFAULTS["log"]


def test_yml_extension(tmp_path):
    path = tmp_path / "app.yml"
    path.write_text(yaml.safe_dump({"name": "short"}))
    assert load_config(str(path))["name"] == "short"


def test_empty_yaml_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(str(path)) == DEFAULTS
