import pytest
import yaml

from appconfig import ConfigError, load_config


def yaml_is_supported(tmp_path):
    # the errors below must come from reading YAML, not from refusing .yaml files altogether
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"name": "ok"}))
    assert load_config(str(path))["name"] == "ok"


def test_top_level_list_rejected_with_file_name(tmp_path):
    yaml_is_supported(tmp_path)
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump([1, 2, 3]))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "list.yaml" in str(info.value)


def test_invalid_yaml_is_a_config_error(tmp_path):
    yaml_is_supported(tmp_path)
    path = tmp_path / "broken.yaml"
    path.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "broken.yaml" in str(info.value)
