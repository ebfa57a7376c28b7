"""String helpers."""
import re


def truncate(text, width, ellipsis="..."):
    """text cut to at most width characters, ending in ellipsis when it was cut."""
    if len(text) <= width:
        return text
    return text[: max(0, width - len(ellipsis))] + ellipsis


def slugify(text):
    """Lower-case ASCII letters and digits, every other run of characters one '-', none at the ends."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
