"""Processes and threads: whether a process lives, how many torch threads a worker gets, and
how a command stops on SIGTERM or Ctrl-C.

The thread rule lives here once: several processes with torch's default threads each (one per
core) collapse to a fraction of the speed on a small machine, so each of N workers on a host
gets cores / N threads, unless the study names a number.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def pid_alive(pid: int) -> bool:
    """Whether process `pid` on this host runs (a zombie does not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def identity(pid: int | None = None) -> str | None:
    """What tells process `pid` (default: this one) from a later process that reuses its number
    on this host: the boot and the process's start time (Linux); None where unknown."""
    pid = os.getpid() if pid is None else pid
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{boot}:{started}"


def runs(pid: int, recorded_identity: str | None) -> bool:
    """Whether process `pid` on this host runs and is the one recorded (not a later process
    that reuses its number)."""
    if not pid_alive(pid):
        return False
    return recorded_identity is None or identity(pid) in (None, recorded_identity)


def threads_per_worker(n_workers: int, threads: int | None = None) -> int:
    """Torch threads for each of `n_workers` CPU processes on this host sharing its cores:
    `threads` when given (workers.threads), else cores // n_workers, at least 1."""
    return threads or max(1, (os.cpu_count() or 1) // max(1, n_workers))


class _InterruptOnce:
    """A signal handler that raises KeyboardInterrupt at the first signal and ignores later
    ones, so that the interrupted process can record its trial undisturbed."""

    def __init__(self) -> None:
        self.fired: int | None = None  # the signal that fired it
        self.again = False  # an interrupt Python swallowed, to be raised again

    def __call__(self, signum: int, frame: Any) -> None:
        # Stays installed, and does nothing after the first signal: swapping in SIG_IGN here
        # would race with a second signal already on its way.
        if self.fired is None or self.again:
            self.fired, self.again = signum, False
            raise KeyboardInterrupt


_current: _InterruptOnce | None = None  # the handler installed last, in this process


def interrupt_once() -> _InterruptOnce:
    """A new handler that interrupts once; an interrupt that lands in a finalizer is raised
    again (see `_raise_swallowed_interrupt`)."""
    global _current
    _current = _InterruptOnce()
    if sys.unraisablehook is not _raise_swallowed_interrupt:
        _previous_hooks.append(sys.unraisablehook)
        sys.unraisablehook = _raise_swallowed_interrupt
    return _current


_previous_hooks: list[Callable[[Any], None]] = []


def _raise_swallowed_interrupt(unraisable: Any) -> None:
    """A KeyboardInterrupt raised while a finalizer ran (a `__del__`, a weakref callback of
    the garbage collector) is printed by Python with a traceback and then forgotten: the
    process would go on as if never interrupted. Deliver it again to the main thread, a moment
    later, when the finalizer has returned; other unraisable errors go to the previous hook."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        signum: int = signal.SIGINT
        if _current is not None and _current.fired is not None:
            _current.again, signum = True, _current.fired
        main = threading.main_thread().ident
        if main is not None:
            timer = threading.Timer(0.01, signal.pthread_kill, args=(main, signum))
            timer.daemon = True
            timer.start()
        return
    (_previous_hooks[-1] if _previous_hooks else sys.__unraisablehook__)(unraisable)


def interrupt_on_signals() -> None:
    """The first SIGTERM, or SIGINT, raises KeyboardInterrupt; later ones are ignored, so that
    a worker can record its interrupted trial (a terminal's Ctrl-C reaches every process of the
    group). A SIGINT ignored by whoever started the harness (`nohup ... &`) stays ignored."""
    handler = interrupt_once()
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """`kill PID` (SIGTERM: what a scheduler or `timeout` sends) stops a command as Ctrl-C
    does: local workers stopped, their trials re-queued, exit 130. Without it the command
    would die at once and leave its worker processes running. Later SIGTERMs are ignored
    while it stops."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt_once())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def every(interval_s: float, fn: Callable[[], None], name: str) -> Iterator[None]:
    """Call `fn` at once and then every `interval_s` seconds, in a daemon thread, while the
    block runs (a heartbeat); `fn` handles its own failures."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            fn()
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def stop_with_parent(parent: int | None) -> None:
    """Have this process interrupted (SIGTERM) when `parent` dies, even by SIGKILL, rather
    than go on working with no one supervising it. Linux only (prctl). Exits at once (130)
    when the parent died before the request took effect."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        raise SystemExit(130)
