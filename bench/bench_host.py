"""What the benchmarks record about the host beside their timings."""
from __future__ import annotations

import os


def steal_seconds():
    """CPU time the hypervisor gave to other guests while this machine's CPUs wanted to run,
    summed over them since boot (Linux /proc/stat), or None where unknown. On this project's VM
    it reached 30% for minutes, so each timed run records how much it lost."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
