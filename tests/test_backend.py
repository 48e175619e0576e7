"""The backend: importable without CuPy, device selection, host/device moves, seeded generators."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rcenp import backend
from rcenp.autograd import Tensor

ROOT = Path(__file__).resolve().parent.parent


def test_import_without_cupy():
    code = ("import sys; sys.modules['cupy'] = None; sys.modules['cupyx'] = None\n"
            "import rcenp, rcenp.functional, rcenp.models, rcenp.detect, rcenp.train, rcenp.cli\n"
            "from rcenp import backend\n"
            "assert not backend.HAS_CUPY and not backend.cuda_available()\n"
            "assert backend.get_array_module(rcenp.Tensor([1.0])).__name__ == 'numpy'\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_device_from_environment(monkeypatch):
    monkeypatch.setenv("RCENP_DEVICE", "cpu")
    assert backend.default_device() == "cpu"
    monkeypatch.delenv("RCENP_DEVICE")
    assert backend.default_device() == "cpu"
    monkeypatch.setenv("RCENP_DEVICE", "tpu")
    with pytest.raises(backend.DeviceError, match="tpu"):
        backend.default_device()
    if not backend.cuda_available():
        monkeypatch.setenv("RCENP_DEVICE", "cuda")
        with pytest.raises(backend.DeviceError,
                           match="RCENP_DEVICE=cuda but CuPy (is not installed|sees no CUDA device)"):
            backend.default_device()


def test_a_cuda_request_says_what_is_missing_and_the_fix(monkeypatch):
    """The trial: "CuPy or a CUDA device is not available" named neither which nor the fix."""
    monkeypatch.setattr(backend, "HAS_CUPY", False)
    assert backend.cuda_missing() == "CuPy is not installed (pip install -e '.[gpu]' in the checkout, or cupy-cuda12x)"
    with pytest.raises(backend.DeviceError, match=r"^device 'cuda' requested but CuPy is not installed \(pip"):
        backend.xp_for("cuda")
    monkeypatch.setattr(backend, "HAS_CUPY", True)
    assert "no CUDA device" in backend.cuda_missing()


def test_moves_and_array_module(xp, device):
    a = backend.to_device(np.arange(3, dtype=np.float32), device)
    assert backend.get_array_module(a) is xp and backend.get_array_module(Tensor(a)) is xp
    assert backend.device_of(a) == device
    back = backend.as_numpy(Tensor(a))
    assert isinstance(back, np.ndarray) and back.tolist() == [0.0, 1.0, 2.0]


def test_seeded_generators_and_default_dtype():
    assert backend.make_rng(5).normal(size=3).tolist() == backend.make_rng(5).normal(size=3).tolist()
    assert backend.make_rng(5).normal(size=3).tolist() != backend.make_rng(6).normal(size=3).tolist()
    assert backend.DEFAULT_DTYPE == np.float32
    assert Tensor(0.5).dtype == np.float32


ALLOCATOR_PROBE = """
import resource, sys
import numpy as np
from rcenp.ops.memory import tune_host_allocator
print(sys.argv[1] == "tune" and tune_host_allocator())

def live_set():   # like a training step: ten 3 MB arrays alive at once, then all freed
    arrays = [np.ones(3 << 20, np.uint8) for _ in range(10)]
    del arrays

live_set()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    live_set()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(*args, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE, *args], capture_output=True,
                         text=True, env=dict(clean, PYTHONPATH=str(ROOT), **env))
    assert out.returncode == 0, out.stderr
    tuned, faults = out.stdout.split()
    return tuned, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tuned_allocator_reuses_freed_memory():
    tuned, faults = _probe("tune")
    if tuned != "True":
        pytest.skip("no glibc mallopt here")
    _, untuned_faults = _probe("leave")
    # 10 rounds of 30 MB: glibc's defaults return the memory and fault ~7,700 pages back per round
    assert untuned_faults > 20_000, untuned_faults   # the probe does exercise the problem
    assert faults < 2_000, faults
    assert _probe("tune", MALLOC_TRIM_THRESHOLD_="131072")[0] == "False"   # the user's setting wins
