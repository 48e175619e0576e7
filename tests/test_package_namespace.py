"""``dir(rcenp)`` lists the package's own names: no standard-library module leaks into it."""
import json
import subprocess
import sys
from pathlib import Path

import rcenp

ROOT = Path(rcenp.__file__).resolve().parent.parent


def test_dir_shows_no_standard_library_modules():
    code = ("import json, types, rcenp\n"
            "names = dir(rcenp)\n"
            "print(json.dumps({'foreign': [n for n in names if isinstance(getattr(rcenp, n), types.ModuleType)\n"
            "                              and not getattr(rcenp, n).__name__.startswith('rcenp')],\n"
            "                  'models': 'models' in names, 'importlib': hasattr(rcenp, 'importlib')}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"foreign": [], "models": True, "importlib": False}
