"""Shared fixtures: every array test runs once per available backend (NumPy, and CuPy on a GPU);
the smoke reproduction that test_reproduce.py reads runs in the background (``BackgroundSmoke``)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from rcenp.backend import cuda_available, xp_for
from rcenp.reproduce.workers import cores

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
def device(xp):
    """The rcenp device of the ``xp`` fixture's array module, for ``.to``: "cuda" for CuPy, else "cpu"."""
    return "cuda" if xp.__name__ == "cupy" else "cpu"


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


class BackgroundSmoke:
    """``rcenp reproduce --budget smoke`` as a user runs it, in child processes started as soon as
    collection finds a test that needs it (the ``smoke`` fixture), so that its minutes run beside
    the rest of the suite. The first child is killed (SIGKILL) after its fifth finished attack
    cell; ``--report`` writes the killed run's report; a second run resumes it to the end with two
    worker processes (``--resume --jobs 2``; one on a one-core machine), a third resumes the
    finished run. ``record`` holds what the tests compare: the cells finished at the kill, every
    cell file's mtime then, after the report and after the resume, and each run's status, stderr
    and cells.json (the report's REPORT.md and table2.csv too)."""

    KILL_AFTER = 5

    def __init__(self, root: Path):
        from rcenp.attacks.jobs import ONE_THREAD

        self.root, self.out = root, root / "smoke"
        self.argv = [sys.executable, "-m", "rcenp", "reproduce", "--budget", "smoke", "--out", str(self.out)]
        # the embedded MNIST sample (as the smoke budget promises), one thread (--jobs workers have one each)
        self.env = {**os.environ, "RCENP_DATA": "", "XDG_CACHE_HOME": str(root / "cache"), **ONE_THREAD}
        self.record, self.error, self.process, self.stopping = {}, None, None, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def attack_cells_finished(self) -> list:
        return sorted(p.parent for p in (self.out / "cells").glob("*/*/summary.json"))

    def cells_finished(self) -> list:
        """Every finished cell's folder (one holding its kind's ``rcenp.reproduce.cells.result_file``)."""
        from rcenp.reproduce.cells import result_file

        names = {result_file(Path(), kind).name for kind in ("attack", "test-error", "features")}
        return sorted(p.parent for name in names for p in (self.out / "cells").glob(f"*/*/{name}"))

    def cell_mtimes(self) -> dict:
        return {p: p.stat().st_mtime_ns for p in (self.out / "cells").glob("*/*/*.*")}

    def _child(self, name: str, *extra, kill_when=None):
        """Run ``rcenp reproduce`` (plus ``extra``), its stderr into ROOT/NAME.log, to its end, or
        SIGKILL it as soon as ``kill_when()`` → (exit status, stdout, stderr)."""
        if self.stopping:
            raise RuntimeError("the test session ended before the smoke run")
        log = self.root / f"{name}.log"
        with open(log, "wb") as err:
            self.process = subprocess.Popen(self.argv + list(extra), env=self.env, stdout=subprocess.PIPE, stderr=err)
        while kill_when is not None and self.process.poll() is None and not kill_when():
            time.sleep(0.02)
        if kill_when is not None:
            self.process.kill()
        stdout, _ = self.process.communicate()
        return self.process.returncode, stdout.decode(), log.read_text()

    def _run(self):
        cells_json = self.out / "cells.json"
        try:
            status, _, _ = self._child("killed", kill_when=lambda: len(self.attack_cells_finished()) >= self.KILL_AFTER)
            self.record.update(killed_status=status, attack_cells_finished=self.attack_cells_finished(),
                               finished=self.cells_finished(), mtimes=self.cell_mtimes(),
                               cut=sorted(p.parent for p in (self.out / "cells").glob("*/*/partial")
                                          if not (p.parent / "summary.json").is_file()))
            status, stdout, stderr = self._child("report", "--report")
            self.record.update(report_status=status, report_stdout=stdout, report_stderr=stderr,
                               report_cells=json.loads(cells_json.read_text()), mtimes_after_report=self.cell_mtimes(),
                               report_md=(self.out / "REPORT.md").read_text(),
                               report_csv_table2=(self.out / "table2.csv").read_text())
            status, _, stderr = self._child("resumed", "--resume", "--jobs", str(min(2, cores())))
            self.record.update(resumed_status=status, resumed_stderr=stderr, mtimes_after=self.cell_mtimes(),
                               resumed={"outcomes": json.loads(cells_json.read_text())})
            status, stdout, stderr = self._child("again", "--resume")
            self.record.update(again_status=status, again_stdout=stdout, again_stderr=stderr,
                               again={"outcomes": json.loads(cells_json.read_text())})
        except BaseException as exc:  # handed to the tests that wait for this run
            self.error = exc

    def result(self):
        """(OUT, record) once the three runs have ended; re-raises what stopped them."""
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.out, self.record

    def stop(self):
        self.stopping = True
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self.thread.join()


_smoke: dict = {}


def pytest_collection_finish(session):
    if not session.config.option.collectonly and \
            any("smoke" in getattr(item, "fixturenames", ()) for item in session.items):
        _smoke["run"] = BackgroundSmoke(Path(tempfile.mkdtemp(prefix="rcenp-smoke-")))


def pytest_unconfigure(config):
    run = _smoke.pop("run", None)
    if run is not None:
        run.stop()
        shutil.rmtree(run.root, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke():
    """(OUT, record) of the smoke reproduction killed and resumed (``BackgroundSmoke``)."""
    if "run" not in _smoke:  # collected by another route (e.g. a plugin that reorders): start it now
        _smoke["run"] = BackgroundSmoke(Path(tempfile.mkdtemp(prefix="rcenp-smoke-")))
    return _smoke["run"].result()
