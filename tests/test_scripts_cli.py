"""Every Python script in scripts/ (not the modules they import, named _*.py): --help prints the
script's whole first docstring paragraph, states each default once, and exits 0."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted(path for path in (Path(__file__).resolve().parents[1] / "scripts").glob("*.py")
                 if not path.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_help_exits_0_with_the_first_paragraph_and_each_default_once(script):
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr, done.stderr
    text = " ".join(done.stdout.split())
    first = ast.get_docstring(ast.parse(script.read_text())).split("\n\n")[0]
    assert " ".join(first.split()) in text   # not cut after its first line
    assert "(default: None)" not in text and "(default: False)" not in text
    assert not re.search(r"\(default: [^)]*\) ?\(default:", text), text
