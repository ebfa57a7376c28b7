"""Load an application's settings over its defaults."""
from .config import DEFAULTS, ConfigError, load_config

__all__ = ["DEFAULTS", "ConfigError", "load_config"]
