"""bench/bench_kd.py's bookkeeping on toy sizes: GPU calls timed each between its own CUDA events
(fake events here), and PyTorch's CPU threads matched to rcenp's workers."""
import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_kd  # noqa: E402


class FakeEvent:
    clock = 0.0  # ms of GPU time so far

    def __init__(self, log):
        self.log, self.at = log, None

    def record(self):
        self.at = FakeEvent.clock
        self.log.append("record")

    def synchronize(self):
        self.log.append("synchronize")


def test_each_gpu_call_is_timed_between_its_own_events():
    log, events, durations = [], [], iter([5.0, 2.0, 4.0, 3.0])  # ms: the warm-up, then three timed calls

    def call():
        log.append("call")
        FakeEvent.clock += next(durations)

    def new_event():
        events.append(FakeEvent(log))
        return events[-1]

    times = bench_kd.event_times(call, 3, new_event, lambda start, end: end.at - start.at)
    assert times == [0.002, 0.004, 0.003] and min(times) == 0.002  # seconds; the best is what is reported
    assert len(events) == 6 and log == ["call"] + ["record", "call", "record", "synchronize"] * 3


def test_pytorchs_cpu_threads_are_rcenps_workers():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    args = argparse.Namespace(seed=0, classes=3, per_class=40, dim=4, queries=30, repeats=1)
    try:
        result = bench_kd.cpu_section(args, 0.1 / 0.26)
    finally:
        torch.set_num_threads(before)
    assert result["torch_cpu_threads"] == result["rcenp_host_workers"] == bench_kd.workers()
    assert result["torch_cpu_max_abs_error_vs_float64"] < 1e-3
