"""One to-do item."""
from dataclasses import dataclass

HIGH, NORMAL, LOW = 1, 2, 3


@dataclass
class Item:
    title: str
    done: bool = False
    priority: int = NORMAL

    def __post_init__(self):
        if self.priority not in (HIGH, NORMAL, LOW):
            raise ValueError("priority must be 1 (high), 2 (normal) or 3 (low), not %r" % (self.priority,))

    def to_dict(self):
        return {"title": self.title, "done": self.done, "priority": self.priority}

    @classmethod
    def from_dict(cls, data):
        return cls(title=data["title"], done=bool(data.get("done", False)),
                   priority=int(data.get("priority", NORMAL)))
