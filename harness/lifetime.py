"""The one owner of a command's lifetime: signals, child processes and the command's own temporary folders.

A `diffparity` command that is stopped (SIGTERM from a scheduler, SIGINT from Ctrl-C or `kill -INT`, SIGHUP
when its terminal goes) must not leave work behind: ranks of a multi-rank run (forked by multiprocessing's
forkserver, so grandchildren of this process), the forkserver and the resource tracker, or hidden folders
(`.ranks-*`, `.staging-*`, a half-built tiny checkpoint). `CommandLifetime` installs handlers that first stop
every descendant process (SIGTERM, then SIGKILL after a grace period) and then raise `Interrupted` in the main
thread, so every `finally` that removes a temporary folder runs with no child still writing into it.
`temporary_folder` names its folders after this process id, so a later command can sweep the folders of a
command that was killed outright (SIGKILL: no handler runs) once that process is gone (`sweep_stale_folders`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE_S = 2.0  # how long children get to exit on SIGTERM before SIGKILL
_TRACKED: set[Path] = set()  # temporary folders alive now (temporary_folder, tracked)


class Interrupted(KeyboardInterrupt):
    """The command received a stop signal; `signum` says which. A KeyboardInterrupt, so code that already lets
    Ctrl-C through lets every stop signal through."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _children_of() -> dict[int, list[int]]:
    """parent pid -> child pids, for every process this user can see (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid ...
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def descendants(pid: int | None = None) -> list[int]:
    """Every process below `pid` (default: this one), children before their own children."""
    tree = _children_of() if Path("/proc").is_dir() else {}
    found: list[int] = []
    pending = list(tree.get(os.getpid() if pid is None else pid, []))
    while pending:
        child = pending.pop(0)
        if child not in found:
            found.append(child)
            pending.extend(tree.get(child, []))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError, OSError):  # a zombie child of ours: reap it
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


def stop_descendants(grace_s: float = GRACE_S) -> int:
    """SIGTERM every descendant process, SIGKILL what is left after `grace_s`; returns how many there were."""
    pids = descendants()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    for pid in pids + descendants():  # a rank forked meanwhile is caught by the second look
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
    forget_stopped_forkserver(pids)
    return len(pids)


def forget_stopped_forkserver(stopped: list[int]) -> None:
    """Make multiprocessing start a new forkserver next time if `stopped` included its current one.

    The forkserver keeps its pid and asks `waitpid` whether it still lives before every launch; once stopped
    and reaped here, that call raises ChildProcessError, so a process that goes on after a stopped command
    (a test session, a notebook calling `main()`) could never launch ranks again."""
    from multiprocessing import forkserver, util

    server = forkserver._forkserver
    with server._lock:
        if server._forkserver_pid is None or server._forkserver_pid not in stopped:
            return
        with contextlib.suppress(OSError, TypeError):
            os.close(server._forkserver_alive_fd)
        address = server._forkserver_address
        if address is not None and not util.is_abstract_socket_namespace(address):
            with contextlib.suppress(OSError):
                os.unlink(address)
        server._forkserver_pid = None
        server._forkserver_alive_fd = None
        server._forkserver_address = None


def _importing(frame: FrameType | None) -> bool:
    """Whether the interrupted code is inside an import (a frame of importlib's bootstrap on the stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


class CommandLifetime:
    """Context manager around one command: stop signals stop the children, then raise `Interrupted` here.

    Only the main thread can install handlers; elsewhere (a command called from a worker thread) it is inert.
    """

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._stopping = False
        self.on_stop: Callable[[str], None] | None = None  # records the stop (error.json) when it cannot unwind

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:  # a second signal while stopping: the first is already unwinding
            return
        self._stopping = True
        stop_descendants()
        if _importing(frame):  # an exception raised inside an import breaks the module (torch: a crash)
            self._stop_now(signal.Signals(signum).name)
        raise Interrupted(signum)

    def _stop_now(self, name: str) -> None:
        """Stop without unwinding (the signal came inside an import): remove the tracked temporary folders,
        record the stop, exit 2."""
        for folder in list(_TRACKED):
            shutil.rmtree(folder, ignore_errors=True)
        if self.on_stop is not None:
            with contextlib.suppress(Exception):
                self.on_stop(name)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(2)

    def __enter__(self) -> CommandLifetime:
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        if exc[0] is not None and issubclass(exc[0], BaseException) and not self._stopping:  # type: ignore[arg-type]
            stop_descendants(grace_s=0.5)  # an error unwinding: no rank may outlive the command either


def temporary_folder_prefix(kind: str) -> str:
    """'.KIND-PID-': the owner's pid is part of the name, so `sweep_stale_folders` can tell abandoned ones."""
    return f".{kind}-{os.getpid()}-"


@contextlib.contextmanager
def temporary_folder(kind: str, parent: Path | None = None) -> Iterator[Path]:
    """A private folder `.KIND-PID-xxxx` in `parent` (default: the system's), removed on the way out whatever
    happens (an error, or a stop signal once the children are stopped)."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=temporary_folder_prefix(kind), dir=parent))
    with tracked(folder):
        yield folder


@contextlib.contextmanager
def tracked(folder: Path) -> Iterator[Path]:
    """Remove `folder` on the way out, and on a stop that cannot unwind (the lifetime removes what is tracked)."""
    _TRACKED.add(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _TRACKED.discard(folder)


def owner_pid(name: str, kind: str, sep: str = "-") -> int | None:
    """The pid in a `.KIND-PID-xxxx` name (`sep` "-"; a tiny checkpoint build's `.NAME.PID.xxxx` with "."),
    None for other names."""
    prefix = f".{kind}{sep}"
    if not name.startswith(prefix):
        return None
    head, _, rest = name[len(prefix):].partition(sep)
    return int(head) if head.isdigit() and rest else None


def sweep_stale_folders(parent: Path, kinds: tuple[str, ...], sep: str = "-") -> list[str]:
    """Remove the `.KIND-PID-*` folders in `parent` whose owner process is gone (killed outright, so no handler
    ran); returns their names. Folders of a live owner (a concurrent command) are left alone."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            for kind in kinds:
                pid = owner_pid(entry.name, kind, sep)
                if pid is not None and pid != os.getpid() and not _alive(pid) and entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(entry.name)
    return removed


__all__ = ["CommandLifetime", "Interrupted", "descendants", "stop_descendants", "sweep_stale_folders",
           "temporary_folder", "temporary_folder_prefix", "tracked"]
