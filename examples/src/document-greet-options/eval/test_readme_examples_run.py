import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def examples():
    """(command, expected output lines) for each '$ python3 greet.py ...' line in a code block."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    found = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("$ ") and "greet.py" in line:
                expected = []
                for following in lines[i + 1:]:
                    if following.startswith("$ "):
                        break
                    expected.append(following)
                found.append((line[2:], expected))
    return found


def test_documented_examples_print_what_the_readme_says():
    cases = examples()
    assert cases, "README.md shows no example as a '$ python3 greet.py ...' line in a code block"
    for command, expected in cases:
        argv = shlex.split(command)
        assert argv[0] in ("python3", "python") and argv[1] == "greet.py", command
        run = subprocess.run([sys.executable] + argv[1:], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0, "%s failed: %s" % (command, run.stderr)
        if any(l.strip() for l in expected):
            assert run.stdout.splitlines() == [l for l in expected if l.strip()], command
