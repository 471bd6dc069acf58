"""What a long command says while people wait: a line per phase, step bars on a terminal, a heartbeat when piped.

A parity run spends seconds to minutes in places that print nothing (importing Diffusers, loading, denoising on
both sides, teacher forcing, goldens, calibration requests). `Progress` keeps the user informed on stderr:
- every phase is one line, `[  12.3 s] flux-tiny: reference (Diffusers), 20 steps`, on a terminal and in a CI
  log alike, written when the next phase starts or once the phase has lasted `delay_s` (1 s): a command that
  fails in its first second still says only its one-line error;
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
                 interactive: bool | None = None, heartbeat_s: float | None = None, delay_s: float = 1.0) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interactive = _isatty(self.stream) if interactive is None else interactive
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else heartbeat_seconds()
        self._start = self._last = time.monotonic()
        self._phase = "starting"
        self._pending: tuple[str, float] | None = None  # a phase line not yet written, and when the phase began
        self.delay_s = delay_s
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

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.close(failed=exc_type is not None)

    def close(self, failed: bool = False) -> None:
        """Stop the heartbeat; the last phase's line is written unless the command failed in it."""
        self._stop.set()
        with self._lock:
            if not failed:
                self._flush()
            self._pending = None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()

    def phase(self, text: str) -> None:
        """A new phase starts: the previous phase's line is written if it was not yet, this one's follows when
        the next phase starts or after `delay_s`; the heartbeat names it from here on."""
        with self._lock:
            self._flush()
            self._phase, self._step = text, ""
            self._pending = (text, time.monotonic())

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
                    self._flush()
                    self._emit(f"{side}: {total} denoising steps done")

        return update

    # ---- inside the lock ----
    def _flush(self) -> None:
        if self._pending is not None:
            text, began = self._pending
            self._pending = None
            self._emit(text, began)

    def _emit(self, text: str, at: float | None = None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        line = f"[{(at or now) - self._start:6.1f} s] {self.label}: {text}"
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
        tick = min(0.25, self.heartbeat_s / 4, self.delay_s / 2)
        while not self._stop.wait(tick):
            with self._lock:
                if self._pending is not None and time.monotonic() - self._pending[1] >= self.delay_s:
                    self._flush()
                quiet = time.monotonic() - self._last
                if quiet >= self.heartbeat_s and not self._bars:  # a live bar already shows progress
                    self._flush()
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
