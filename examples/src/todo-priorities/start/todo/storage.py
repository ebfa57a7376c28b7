"""Reading and writing the list as JSON."""
import json
import os

from .model import Item


def load(path):
    """The items stored at path; an empty list when the file does not exist yet."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [Item.from_dict(d) for d in json.load(f)]


def save(items, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump([item.to_dict() for item in items], f, indent=2)
        f.write("\n")
