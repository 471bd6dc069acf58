"""What a long command says while people wait: a line per phase, step bars on a terminal, a heartbeat when piped.

A parity run spends seconds to minutes in places that print nothing (importing Diffusers, loading, denoising on
both sides, teacher forcing, goldens, calibration requests). `Progress` keeps the user informed on stderr:
- every phase is one line, `[  12.3 s] flux-tiny: reference (Diffusers), 20 steps`, on a terminal and in a CI
  log alike;
- on a terminal, the denoising steps of each side are a tqdm bar that disappears when done;
- whatever the stream, a heartbeat thread writes `<phase>: still running (<last step>)` after `heartbeat_s`
  seconds without a line (10 s; `DIFFPARITY_HEARTBEAT_S` changes it), so a piped log is never silent longer.
The object is also the step-callback factory parity runs take (`progress("reference")` -> `(done, total)`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

StepCallback = Callable[[int, int], None]
DEFAULT_HEARTBEAT_S = 10.0


def heartbeat_seconds() -> float:
    """`DIFFPARITY_HEARTBEAT_S` when it is a positive number, else 10 s."""
    try:
        value = float(os.environ.get("DIFFPARITY_HEARTBEAT_S", DEFAULT_HEARTBEAT_S))
    except ValueError:
        return DEFAULT_HEARTBEAT_S
    return value if 0 < value < 3600 else DEFAULT_HEARTBEAT_S


class Progress:
    """Phase lines, step bars (terminal only) and a heartbeat on `stream` for one command; use it as a context
    manager (the heartbeat thread stops on exit). `enabled=False` says nothing at all (`--no-progress`)."""

    def __init__(self, label: str, stream: TextIO | None = None, enabled: bool = True,
                 interactive: bool | None = None, heartbeat_s: float | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interactive = _isatty(self.stream) if interactive is None else interactive
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else heartbeat_seconds()
        self._start = self._last = time.monotonic()
        self._phase = "starting"
        self._step = ""
        self._bars: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="diffparity-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()

    def phase(self, text: str) -> None:
        """A new phase starts: one line now, and the heartbeat names it from here on."""
        with self._lock:
            self._phase, self._step = text, ""
            self._emit(text)

    def __call__(self, side: str) -> StepCallback | None:
        """The step callback of one side's denoising loop (None when disabled)."""
        if not self.enabled:
            return None

        def update(done: int, total: int) -> None:
            with self._lock:
                self._step = f"{side} denoising step {done}/{total}"
                if self.interactive:
                    self._bar(side, done, total)
                if done >= total:
                    self._step = ""
                    self._emit(f"{side}: {total} denoising steps done")

        return update

    # ---- inside the lock ----
    def _emit(self, text: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        line = f"[{now - self._start:6.1f} s] {self.label}: {text}"
        if self._bars:
            from tqdm import tqdm

            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)
        self._last = now

    def _bar(self, side: str, done: int, total: int) -> None:
        bar = self._bars.get(side)
        if bar is None:
            from tqdm import tqdm

            bar = self._bars[side] = tqdm(total=total, desc=f"{side} denoise", unit="step", file=self.stream,
                                          leave=False)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            del self._bars[side]

    def _beat(self) -> None:
        tick = min(1.0, self.heartbeat_s / 4)
        while not self._stop.wait(tick):
            with self._lock:
                quiet = time.monotonic() - self._last
                if quiet >= self.heartbeat_s and not self._bars:  # a live bar already shows progress
                    self._emit(f"{self._phase}: still running" + (f" ({self._step})" if self._step else ""))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def phase_of(progress: object) -> Callable[[str], None]:
    """`progress.phase` when `progress` is a `Progress`, else a no-op (a plain step-callback factory, or None)."""
    return progress.phase if isinstance(progress, Progress) else _silent


def _silent(text: str) -> None:
    del text
