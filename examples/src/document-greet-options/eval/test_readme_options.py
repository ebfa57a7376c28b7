import os
import re

OPTIONS = {
    "--name": ["greet", "who", "person"],
    "--shout": ["capital", "upper", "loud"],
    "--times": ["times", "repeat", "how many", "count"],
}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def usage_section():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    match = re.search(r"^##\s+Usage\s*$(.*?)(?=^##\s|\Z)", text, re.M | re.S | re.I)
    assert match, "README.md has no '## Usage' section"
    return match.group(1)


def test_every_option_is_explained():
    section = usage_section()
    lines = section.splitlines()
    for option, words in OPTIONS.items():
        described = [l for l in lines if option in l and not l.lstrip().startswith(("$", "python"))]
        assert described, "%s is not described in the Usage section" % option
        text = " ".join(described).lower().replace(option, "")
        assert any(w in text for w in words), "the description of %s does not say what it does" % option
