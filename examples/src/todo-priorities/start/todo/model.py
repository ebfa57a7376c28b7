"""One to-do item."""
from dataclasses import dataclass


@dataclass
class Item:
    title: str
    done: bool = False

    def to_dict(self):
        return {"title": self.title, "done": self.done}

    @classmethod
    def from_dict(cls, data):
        return cls(title=data["title"], done=bool(data.get("done", False)))
