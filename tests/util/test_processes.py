"""How a process stops on a signal: an interrupt is never lost, wherever it lands."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# The signal lands while a weakref callback of the garbage collector runs: Python prints the
# KeyboardInterrupt raised there with a traceback and goes on, unless it is raised again.
SCRIPT = textwrap.dedent("""
    import os, signal, sys, time, weakref
    from harness.util.processes import interrupt_on_signals, sigterm_as_interrupt

    class Thing:
        pass

    def finalizer(ref):
        os.kill(os.getpid(), signal.{signal})  # arrives here, inside the callback
        for _ in range(100_000):
            pass

    def work():
        thing = Thing()
        keep = weakref.ref(thing, finalizer)
        del thing
        time.sleep(10)
        print("not interrupted", keep)

    try:
        if "{how}" == "worker":
            interrupt_on_signals()
            work()
        else:
            with sigterm_as_interrupt():
                work()
    except KeyboardInterrupt:
        print("interrupted")
""")


@pytest.mark.parametrize(("how", "sig"), [("worker", "SIGINT"), ("worker", "SIGTERM"),
                                          ("command", "SIGINT"), ("command", "SIGTERM")])
def test_an_interrupt_that_lands_in_a_finalizer_still_interrupts(how: str, sig: str) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(how=how, signal=sig)],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "interrupted", (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
