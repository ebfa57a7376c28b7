"""Settings files (JSON or YAML) laid over the defaults."""
import copy
import json

import yaml

DEFAULTS = {
    "name": "app",
    "debug": False,
    "server": {"host": "127.0.0.1", "port": 8080},
    "log": {"level": "info", "file": None},
}


class ConfigError(Exception):
    """A settings file that cannot be used."""


def merge(base, override):
    """base with override laid over it; nested mappings are merged key by key."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def read(path):
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            return json.load(f)
        if path.endswith((".yaml", ".yml")):
            try:
                return yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ConfigError("%s: invalid YAML: %s" % (path, e)) from e
    raise ConfigError("%s: unsupported settings file type (use .json, .yaml or .yml)" % path)


def load_config(path):
    """DEFAULTS with the settings file at path (JSON, or YAML: .yaml/.yml) merged over them."""
    data = read(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("%s: the top level must be a mapping" % path)
    return merge(DEFAULTS, data)
