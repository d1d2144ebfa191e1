"""Damage in the embedded journal storage: found before anything is appended to it.

The journal is one JSON operation per line. A process killed mid-write (or a full disk) leaves
a cut-off last line; appending after it would glue the next operation onto it and make the whole
file unreadable. Under the journal's own lock (so no live writer is mid-line), `check` sets
such a tail aside in a side file, truncates the journal after its last whole line, and warns
with what was lost. A damaged line that is not the last cannot be a cut-off write: it is
reported with its line number and nothing is written.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from optuna.storages.journal._file import BaseJournalFileLock  # the locks' base: not exported

from harness.errors import JournalDamaged

log = logging.getLogger(__name__)

# Optuna's journal operation codes, for the warning (optuna.storages.journal.JournalOperation).
_OPERATIONS = {0: "create study", 1: "delete study", 2: "set a study attr",
               3: "set a study system attr", 4: "create a trial", 5: "set a trial param",
               6: "set a trial's state", 7: "report a dev loss", 8: "set a trial attr",
               9: "set a trial system attr", 10: "discard trials"}


def check(path: Path, lock: BaseJournalFileLock) -> Path | None:
    """Repair a cut-off last line of the journal at `path`; raise on damage elsewhere.

    Returns the side file that now holds the cut-off bytes, or None when nothing was cut off.
    """
    if not path.exists() or path.stat().st_size == 0:
        return None
    lock.acquire()
    try:
        data = path.read_bytes()
        whole = data.rfind(b"\n") + 1  # bytes up to the end of the last whole line
        lines = data[:whole].splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                json.loads(line)
            except ValueError:
                raise JournalDamaged(
                    f"the Optuna journal {path} is damaged at line {number} (of "
                    f"{len(lines)}): it is not a whole operation, and it is not the last "
                    "line, so it is not a cut-off write. Nothing was written. Restore the file "
                    "from a backup, or move it aside to start the studies in it afresh.") from None
        if whole == len(data):
            return None
        return _set_aside(path, data[whole:], whole)
    finally:
        lock.release()


def _set_aside(path: Path, tail: bytes, keep: int) -> Path:
    side = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    side.write_bytes(tail)
    with path.open("r+b") as f:
        f.truncate(keep)
    code = re.search(rb'"op_code":\s*(\d+)', tail)
    what = _OPERATIONS.get(int(code[1]), "an operation") if code else "an operation"
    log.warning("the Optuna journal %s ended in a cut-off write (%d bytes: %s, from a process "
                "killed mid-write or a full disk); it was set aside in %s and the journal goes on "
                "from its last whole line", path, len(tail), what, side)
    return side
