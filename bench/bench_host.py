"""What the bench scripts share: the host's steal time they record beside their timings, their
ResNet depth and image shape options, how they print (and with --json write) their JSON report,
and their entry points' one-line errors. A module they import, not a command."""
from __future__ import annotations

import argparse
import json
import math
import numbers
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's rcenp

from rcenp.argtypes import integer  # noqa: E402


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


def resnet_depth(text: str) -> int:
    """A ResNet depth option (argparse type): 6n+2 with n >= 1, as ``rcenp.models.resnet`` builds."""
    value = integer(text)
    if value < 8 or (value - 2) % 6:
        raise argparse.ArgumentTypeError(f"must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, ...), got {text}")
    return value


def image_shape(text: str) -> tuple:
    """An image shape option CxHxW (argparse type): C positive, H and W positive multiples of 4
    (the ResNet halves them twice)."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1 or shape[1] % 4 or shape[2] % 4:
        raise argparse.ArgumentTypeError(f"expected CxHxW, H and W multiples of 4 (e.g. 3x32x32), got {text!r}")
    return shape


def finite(value):
    """``value`` with every non-finite float in it (NaN, +-inf; NumPy's too), at any depth of dicts,
    lists and tuples, replaced by None, which JSON writes as null."""
    if isinstance(value, dict):
        return {key: finite(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # float, NumPy's floats
        return float(value) if math.isfinite(value) else None
    return value


def emit_report(report: dict, json_path=None, indent: int = 2) -> None:
    """Print ``report`` as JSON, non-finite numbers as null (``finite``: strict JSON, never NaN or
    Infinity), and write the same text to ``json_path`` when given (atomically: a failed write
    leaves an earlier file whole; OSError where it cannot be written)."""
    text = json.dumps(finite(report), indent=indent, allow_nan=False)
    print(text)
    if json_path:
        from rcenp.checkpoint import atomic_write_text

        atomic_write_text(json_path, text + "\n")


def exit_status(main) -> int:
    """``main()``'s exit status; where it raised one of rcenp's one-line errors (bad data, a bad
    checkpoint or device, a bad value, a file), 2 after ``SCRIPT: error: MESSAGE`` on stderr, as
    argparse's errors read."""
    try:
        return main()
    except Exception as exc:
        # imported on failure only, so that bench_engine.py's PyTorch child loads no more of rcenp
        from rcenp.backend import DeviceError
        from rcenp.checkpoint import CheckpointError
        from rcenp.cli import error_text
        from rcenp.data import DataError

        if not isinstance(exc, (CheckpointError, DataError, DeviceError, ValueError, OSError)):
            raise
        sys.stderr.write(f"{os.path.basename(sys.argv[0])}: error: {error_text(exc)}\n")
        return 2


COMMANDS = ("bench_attacks.py", "bench_conv_floor.py", "bench_engine.py", "bench_kd.py", "profile_forward.py")


def not_a_command(path: str) -> str:
    """What a module of the bench scripts says when it is run directly (its exit message)."""
    return (f"{os.path.basename(path)}: a module of the bench scripts, not a command; run "
            f"{', '.join(COMMANDS[:-1])} or {COMMANDS[-1]}")


if __name__ == "__main__":
    sys.exit(not_a_command(__file__))
