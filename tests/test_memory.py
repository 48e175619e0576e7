"""Host memory reuse (rcenp.ops.memory): the buffer pool, the scratch buffers, and a plain
script's training step reusing its buffers."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rcenp
from rcenp.models import resnet
from rcenp.objectives import Classifier
from rcenp.ops import memory
from rcenp.optim import SGD

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (64, 32, 32)  # 256 KiB of float32: pooled


@pytest.fixture
def fresh_pool():
    memory.release_host_memory()
    yield
    memory.release_host_memory()


def test_a_block_is_handed_out_again_only_when_nothing_views_it(fresh_pool):
    a = memory.empty(SHAPE, np.float32)
    view = a[::2].T[1:]                                    # a view of a view
    window = np.lib.stride_tricks.as_strided(a, (4, 4), (8, 4))
    reinterpreted = a.view(np.int32)
    del a
    for held in (view, window, reinterpreted):
        b = memory.empty(SHAPE, np.float32)
        assert not np.shares_memory(b, held)
        del b
    block = memory.pool_stats()["blocks"]
    del view, window, reinterpreted, held
    c = memory.empty(SHAPE, np.float32)
    assert memory.pool_stats()["blocks"] == block           # reused, not allocated
    assert c.shape == SHAPE and c.dtype == np.float32 and c.flags.c_contiguous


def test_blocks_are_keyed_by_bytes_and_small_arrays_bypass_the_pool(fresh_pool):
    a = memory.empty(SHAPE, np.float32)
    a_address = a.__array_interface__["data"][0]
    del a
    b = memory.empty((SHAPE[0] * 2,) + SHAPE[1:], np.float16)   # same bytes, other dtype and shape
    assert b.__array_interface__["data"][0] == a_address and b.dtype == np.float16
    small = memory.empty((8, 8), np.float32)
    assert small.base is None and memory.pool_stats()["blocks"] == 1


def test_the_pool_stays_within_its_bound_of_the_in_use_high_water_mark(fresh_pool):
    rng = np.random.default_rng(0)
    live = []
    for _ in range(300):
        live.append(memory.empty((int(rng.integers(64, 400)), 1024), np.float32))
        if len(live) > 5:
            live.pop(int(rng.integers(0, len(live))))
        stats = memory.pool_stats()
        assert stats["held_bytes"] <= memory._SLACK * stats["high_water_bytes"]
    assert stats["high_water_bytes"] <= 6 * 400 * 1024 * 4


def test_scratch_reuses_one_growing_block_per_name_and_thread(fresh_pool):
    a = memory.scratch(np, "t", (10, 10), np.float32)
    a[...] = 1
    b = memory.scratch(np, "t", (5, 4), np.float64)
    assert np.shares_memory(a, b) and b.shape == (5, 4)
    c = memory.scratch(np, "t", (100, 100), np.float32)      # grows
    assert c.shape == (100, 100) and not np.shares_memory(a, c)
    assert not np.shares_memory(c, memory.scratch(np, "u", (10,), np.float32))


def _training_run(steps=3):
    """Loss, parameters and an eval input gradient after a few ResNet-8 steps (batch 32)."""
    model = Classifier(resnet(8, 3), "rce")
    opt = SGD(model.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    for _ in range(steps):
        opt.zero_grad()
        loss = model.loss(x, y)
        loss.backward()
        opt.step()
    model.eval()
    images = rcenp.Tensor(x, requires_grad=True)
    gx = rcenp.grad(model.loss(images, y), images)
    return [float(loss.data), gx] + [p.data.copy() for p in model.parameters()]


def test_results_are_bit_identical_with_and_without_the_pool(monkeypatch, fresh_pool):
    pooled = _training_run()
    assert memory.pool_stats()["blocks"] > 0
    monkeypatch.setattr(memory, "_enabled", False)
    plain = _training_run()
    for a, b in zip(pooled, plain):
        np.testing.assert_array_equal(a, b)


PLAIN_SCRIPT = """
import resource, sys
import numpy as np
import rcenp
from rcenp.models import resnet
from rcenp.objectives import Classifier
from rcenp.ops import memory
from rcenp.optim import SGD

model = Classifier(resnet(8, 3), "ce")
opt = SGD(model.parameters(), lr=0.01)
x = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
y = np.arange(64) % 10

def step():
    opt.zero_grad()
    model.loss(x, y).backward()
    opt.step()

step(); step()
blocks = memory.pool_stats()["blocks"]
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(memory.pool_stats()["blocks"] - blocks, sorted(faults)[2], sum(faults), memory.pool_stats()["held_bytes"] // 4096)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts Linux page faults")
def test_a_plain_scripts_training_step_reuses_its_buffers():
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "RCENP_HOST_POOL"))}
    out = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT], capture_output=True, text=True,
                         env=dict(clean, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    new_blocks, median_faults, all_faults, pooled_pages = map(int, out.stdout.split())
    assert new_blocks == 0
    # without reuse every step faults most of its ~17,000 pooled pages back in (6,000-18,000 here);
    # with it a step faults a handful. A worker's scratch buffers still grow (once) the first time
    # it is handed a chunk of a pass it has not run before, which on a busy machine, where the
    # main thread may run every chunk of a pass before the helper wakes, can be in any step (up to
    # about 1,000 pages over 3 steps seen on this VM under load; none with one worker): so the
    # median step, and all five together well under one step without reuse.
    assert pooled_pages > 10_000, pooled_pages
    assert median_faults < 300, median_faults
    assert all_faults < 5_000, all_faults
