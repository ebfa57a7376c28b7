import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def usage_section():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    match = re.search(r"^##\s+Usage\s*$(.*?)(?=^##\s|\Z)", text, re.M | re.S | re.I)
    assert match, "README.md has no '## Usage' section"
    return match.group(1)


def test_usage_section_shows_a_command():
    section = usage_section()
    blocks = re.findall(r"```[^\n]*\n(.*?)```", section, re.S)
    assert any("greet.py" in b for b in blocks), "the Usage section has no code block with a greet.py command"
