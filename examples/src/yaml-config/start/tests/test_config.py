import json

import pytest

from appconfig import DEFAULTS, ConfigError, load_config


def test_json_overrides_top_level(tmp_path):
    path = tmp_path / "app.json"
    path.write_text(json.dumps({"name": "demo", "debug": True}))
    cfg = load_config(str(path))
    assert cfg["name"] == "demo" and cfg["debug"] is True
    assert cfg["log"] == DEFAULTS["log"]


def test_unknown_type_rejected(tmp_path):
    path = tmp_path / "app.ini"
    path.write_text("x=1")
    with pytest.raises(ConfigError):
        load_config(str(path))
