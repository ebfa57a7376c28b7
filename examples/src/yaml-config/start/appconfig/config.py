"""Settings files laid over the defaults."""
import copy
import json

DEFAULTS = {
    "name": "app",
    "debug": False,
    "server": {"host": "127.0.0.1", "port": 8080},
    "log": {"level": "info", "file": None},
}


class ConfigError(Exception):
    """A settings file that cannot be used."""


def load_config(path):
    """DEFAULTS with the top-level keys of the JSON file at path replaced."""
    if not path.endswith(".json"):
        raise ConfigError("%s: unsupported settings file type" % path)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ConfigError("%s: the top level must be a mapping" % path)
    result = copy.deepcopy(DEFAULTS)
    result.update(data)
    return result
