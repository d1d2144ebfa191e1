"""Named moments at which the harness can be made to die, for the tests that kill it.

`reached(name)` does nothing unless HARNESS_FAILPOINT names `name` (its value, or one of its
comma-separated values): then the process kills itself with SIGKILL on the spot, as a power
cut or the kernel's OOM killer would, with nothing flushed or closed. The chaos tests use it
for the few moments a random kill rarely hits (between the test evaluation and the result).
"""

from __future__ import annotations

import os
import signal


def reached(name: str) -> None:
    """Die here if HARNESS_FAILPOINT names this moment."""
    wanted = os.environ.get("HARNESS_FAILPOINT")
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
