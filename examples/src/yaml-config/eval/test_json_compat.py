import json

from appconfig import load_config


def test_json_files_still_load(tmp_path):
    path = tmp_path / "app.json"
    path.write_text(json.dumps({"name": "demo"}))
    cfg = load_config(str(path))
    assert cfg["name"] == "demo"
    assert cfg["server"]["port"] == 8080
