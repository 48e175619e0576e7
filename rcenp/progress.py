"""One progress line for long work (training steps, attack batches): live on a terminal, a plain
line per interval otherwise, mirrored with timestamps to a log file."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path


class Progress:
    """``update(done, detail, eta_s)`` prints ``"{unit} {done}/{total}  {detail}  ETA h:mm:ss"``."""

    def __init__(self, log_path: Path | None, total: int, interval: float = 10.0, stream=sys.stderr,
                 unit: str = "step"):
        self.total, self.interval, self.stream, self.unit = total, interval, stream, unit
        self.live = hasattr(stream, "isatty") and stream.isatty()
        self.log = open(log_path, "a") if log_path else None
        self.last = -math.inf  # the first line prints, even on a clock that began under `interval` ago

    def update(self, done, detail: str, eta_s: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (0.5 if self.live else self.interval):
            return
        self.last = now
        line = f"{self.unit} {done}/{self.total}  {detail}  ETA {duration(eta_s)}"
        self.stream.write(("\r" + line + " " * 4) if self.live else line + "\n")
        self.stream.flush()
        self.message(line, echo=False)

    def message(self, text: str, echo: bool = True) -> None:
        if echo:
            self.stream.write(("\n" if self.live else "") + text + "\n")
            self.stream.flush()
        if self.log:
            self.log.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")
            self.log.flush()

    def close(self) -> None:
        """End the live line and close the log; a second call does nothing."""
        if self.live:
            self.stream.write("\n")
            self.live = False
        if self.log:
            self.log.close()
            self.log = None


def counter(unit: str, detail: str, stream=None, interval: float = 10.0):
    """A ``progress(done, total)`` callback (``Detector.features_and_logits``'s) that prints
    ``"{unit} {done}/{total}  {detail}  ETA h:mm:ss"`` lines through a ``Progress``, the ETA from the
    rate since the counter was made (so make it just before the work); the line for done == total
    is always printed. stream: default sys.stderr as it is at the call."""
    state = {"t0": time.monotonic()}
    stream = sys.stderr if stream is None else stream

    def report(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = Progress(None, total, interval, stream, unit)
        elapsed = time.monotonic() - state["t0"]
        state["bar"].update(done, detail, elapsed / done * (total - done) if done else math.inf, force=done >= total)
        if done >= total:
            state["bar"].close()

    return report


def duration(seconds: float) -> str:
    """H:MM:SS with unbounded hours ('?' when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def plural(count: int, one: str, many: str) -> str:
    """'1 batch', '4 batches'."""
    return f"{count} {one if count == 1 else many}"


def article(abbreviation: str) -> str:
    """An abbreviation read letter by letter, upper-cased, after its indefinite article: 'a CE',
    'an RCE' (letters whose names start with a vowel sound take 'an')."""
    word = abbreviation.upper()
    return f"{'an' if word[:1] in 'AEFHILMNORSX' else 'a'} {word}"
