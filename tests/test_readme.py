"""The README's Python examples run as written (each block in a fresh namespace, as a user pastes it)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, monkeypatch, tmp_path):
    import warnings

    from rcenp.attacks import EtaApproximationWarning

    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always")
        exec(compile(BLOCKS[index], f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})
    # a block that says a warning will appear shows it; no block raises any other
    said = "EtaApproximationWarning says so" in BLOCKS[index]
    assert [w.category for w in heard] == ([EtaApproximationWarning] if said else []), [str(w.message) for w in heard]
