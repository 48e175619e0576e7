"""Where a report's numbers came from: the invocations that computed its cells
(reproduce.json's ``computed_by``, ``rcenp.reproduce.run.record_invocation``), the device each
finished attack cell recorded in its summary.json, and the batches they ran in."""
from __future__ import annotations

from rcenp.progress import plural


def computed_by_line(entries: list | None, finished: int = 0) -> str:
    """REPORT.md's record of the invocations that computed cells (reproduce.json's computed_by),
    and how many of the ``finished`` cells found in OUT (reused ones not counted) fall outside it:
    those computed before the record was kept. 'At least': an entry also counts a cell it
    recomputed after setting a stale one aside."""
    unrecorded = finished - sum(e["cells"] for e in entries or [])
    before = (f"; at least {plural(unrecorded, 'cell', 'cells')} of OUT computed before the record was kept (each "
              f"attack cell's summary.json names the code that computed it)") if unrecorded > 0 and entries else ""
    if not entries:
        return "- cells computed by: no invocation recorded (those before the record was kept are not in it)"
    return "- cells computed by: " + "; ".join(
        f"`{e['command']}` ({e['code']}{_on(e.get('compute'))}, {plural(e['cells'], 'cell', 'cells')} in "
        f"{e['seconds']:.0f} s, {'stopped' if e.get('stopped') else 'finished'} {e['finished']})"
        for e in entries) + before


def other_batches(res) -> str:
    """'; 12 of the finished attack cells ran in batches of 100, as they began' for the finished cells whose
    batch size is not the one the budget plans for them now (a cell goes on in the batches it
    began with), else ''."""
    other = {}
    for cell in res.cells.values():
        summary = res.summary(cell) if cell.kind == "attack" else None
        size = summary and summary.get("settings", {}).get("batch_size")
        if size and size != cell.batch_size:
            other[cell.key] = size
    if not other:
        return ""
    sizes = " and ".join(f"{n:,}" for n in sorted(set(other.values())))
    return f"; {len(other)} of the finished attack cells ran in batches of {sizes}, as they began"


def devices_line(res) -> str:
    """'- attack cells computed on (their summary.json): 68 on cuda (NVIDIA H200, CuPy 14.2.0)': what
    each finished cell recorded of its device, whatever the invocation records say."""
    counts: dict[str, int] = {}
    for cell in res.cells.values():
        summary = res.summary(cell) if cell.kind == "attack" else None
        if summary is not None:
            software = summary.get("software", {})
            compute = {k: software.get(k) for k in ("device", "gpu", "cupy")}
            if compute["device"] == "cuda" and not compute["gpu"]:  # recorded before the GPU's name was
                compute["gpu"] = "GPU not recorded"
            name = _device(compute) or "a device not recorded"
            counts[name] = counts.get(name, 0) + 1
    if not counts:
        return "- attack cells computed on: none finished"
    return "- attack cells computed on (their summary.json): " + ", ".join(f"{n:,} on {d}" for d, n in counts.items())


def _device(compute: dict | None) -> str:
    """'cuda (NVIDIA H200, CuPy 14.2.0)' or 'cpu' from a ``device_identity`` record; '' for one
    without a device (an invocation recorded before the device was)."""
    if not compute or not compute.get("device"):
        return ""
    details = ", ".join(f"CuPy {v}" if k == "cupy" else str(v) for k, v in compute.items() if k != "device" and v)
    return compute["device"] + (f" ({details})" if details else "")


def _on(compute: dict | None) -> str:
    """', on cuda (NVIDIA H200, CuPy 14.2.0)' (``_device``), or '' where no device is recorded."""
    device = _device(compute)
    return f", on {device}" if device else ""
