"""``import rcenp`` stays cheap and reaches every subpackage by attribute (PEP 562)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import rcenp

ROOT = Path(rcenp.__file__).resolve().parent.parent


def fresh_python(code: str) -> str:
    """stdout of ``code`` run by a new interpreter that imports this checkout's rcenp."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_rcenp_then_use_subpackages_without_importing_them():
    out = fresh_python(
        "import json, sys, rcenp\n"
        "eager = sorted(m for m in sys.modules if m.split('.')[:2] in (['rcenp', 'models'], ['rcenp', 'detect'],"
        " ['rcenp', 'train'], ['rcenp', 'data'], ['rcenp', 'metrics']))\n"
        "model, manifest = rcenp.models.load('mnist-resnet32-rce')\n"
        "print(json.dumps({'eager': eager, 'model': type(model).__name__, 'objective': model.objective,\n"
        "                  'metrics': callable(rcenp.metrics.confidence), 'detector': rcenp.detect.Detector.__name__,\n"
        "                  'file': rcenp.__file__}))\n")
    result = json.loads(out)
    assert result == {"eager": [], "model": "Classifier", "objective": "rce", "metrics": True,
                      "detector": "Detector", "file": str(ROOT / "rcenp" / "__init__.py")}


def test_unknown_and_absent_names_are_attribute_errors(monkeypatch):
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        rcenp.nonexistent  # noqa: B018
    monkeypatch.setattr(rcenp, "SUBMODULES", rcenp.SUBMODULES + ("not_written_yet",))
    assert not hasattr(rcenp, "not_written_yet")  # listed but absent: AttributeError, not ImportError
    assert "not_written_yet" not in dir(rcenp) and "models" in dir(rcenp)


@pytest.mark.skipif(not (ROOT / "rcenp" / "attacks").is_dir(), reason="rcenp/attacks is not in this checkout yet")
def test_attacks_by_attribute():
    out = fresh_python("import rcenp\nprint(rcenp.attacks.__name__)")
    assert out.strip() == "rcenp.attacks"


def test_the_shipped_models_are_listed_from_python():
    import rcenp

    names = rcenp.models.shipped_models()
    assert {"mnist-resnet32-ce", "mnist-resnet32-rce"} <= set(names) and names == sorted(names)
    assert rcenp.models.load.__doc__.startswith("(model, manifest) for a shipped model name")


def test_a_model_name_must_be_a_string_or_path():
    import rcenp

    with pytest.raises(TypeError, match="string or a path"):
        rcenp.models.load(None)
