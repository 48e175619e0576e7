"""Shared fixtures: every array test runs once per available backend (NumPy, and CuPy on a GPU)."""
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from rcenp.backend import cuda_available, xp_for

settings.register_profile("default", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
os.environ["RCENP_FEATURE_CACHE"] = "off"  # tests (and the commands they start) never write the user's cache

BACKENDS = [pytest.param("cpu", id="numpy"),
            pytest.param("cuda", id="cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(
                not cuda_available(), reason="CuPy or a CUDA device is not available")])]


@pytest.fixture(params=BACKENDS, scope="session")
def xp(request):
    """The array module under test (numpy, or cupy when a GPU is present)."""
    return xp_for(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def load_script(monkeypatch):
    """A loader of the repository's scripts/NAME.py as a module (scripts are not a package); the
    module is in sys.modules while the test runs, as dataclasses need."""
    def load(name):
        spec = importlib.util.spec_from_file_location(f"scripts_{name}",
                                                      Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        return module
    return load
