"""Progress of long runs: a tqdm bar on a terminal, plain lines in logs and CI."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """``update(done)`` as work advances; a bar when ``stream`` is a terminal, else lines.

    Lines go out at most every ``every`` seconds (and at the end), each with the
    count, the rate and the time left, so a log stays short.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        stream: TextIO | None = None,
        every: float = 5.0,
        extra: Any = None,
    ) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.stream: TextIO
        if stream is None:  # a bar on the terminal; lines on stdout, so stderr is for errors
            self.stream = sys.stderr if sys.stderr.isatty() else sys.stdout
        else:
            self.stream = stream
        self.extra = extra  # callable(done) -> str, appended to each line
        self.start = self._last = time.perf_counter()
        self.done = 0
        self._bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self.stream)

    def update(self, done: int) -> None:
        step, self.done = done - self.done, done
        suffix = self.extra(done) if self.extra else ""
        if self._bar is not None:
            if suffix:
                self._bar.set_postfix_str(suffix, refresh=False)
            self._bar.update(step)
            return
        now = time.perf_counter()
        if done < self.total and now - self._last < self.every:
            return
        self._last = now
        print(self.line(done, now - self.start, suffix), file=self.stream, flush=True)

    def line(self, done: int, seconds: float, suffix: str = "") -> str:
        rate = done / seconds if seconds > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else float("nan")
        text = f"{self.desc}: {done}/{self.total} {self.unit}, {rate:,.1f} {self.unit}/s"
        if done < self.total:
            text += f", about {left:,.0f} s left"
        return text + (f", {suffix}" if suffix else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
