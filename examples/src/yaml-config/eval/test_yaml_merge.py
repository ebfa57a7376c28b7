import yaml

from appconfig import DEFAULTS, load_config


def test_nested_sections_merge_key_by_key(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump({"server": {"port": 9000}, "log": {"level": "debug"}}))
    cfg = load_config(str(path))
    assert cfg["server"] == {"host": "127.0.0.1", "port": 9000}
    assert cfg["log"] == {"level": "debug", "file": None}


def test_defaults_are_not_modified(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump({"server": {"port": 1}}))
    load_config(str(path))
    assert DEFAULTS["server"]["port"] == 8080
