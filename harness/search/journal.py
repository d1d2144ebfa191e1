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


# What each operation must hold for Optuna to replay it: key -> the types it may have.
_INT, _STR, _DICT, _LIST = (int,), (str,), (dict,), (list,)
_FIELDS: dict[int, dict[str, tuple[type, ...]]] = {
    0: {"study_name": _STR, "directions": _LIST},
    1: {"study_id": _INT},
    2: {"study_id": _INT, "user_attr": _DICT},
    3: {"study_id": _INT, "system_attr": _DICT},
    4: {"study_id": _INT},
    5: {"trial_id": _INT, "param_name": _STR, "distribution": _STR},
    6: {"trial_id": _INT, "state": _INT},
    7: {"trial_id": _INT, "step": _INT},
    8: {"trial_id": _INT, "user_attr": _DICT},
    9: {"trial_id": _INT, "system_attr": _DICT},
    10: {"study_id": _INT},
}


def check(path: Path, lock: BaseJournalFileLock, *, repair: bool = True) -> Path | None:
    """Raise JournalDamaged when a line of the journal at `path` before its last is not a
    whole operation; set a cut-off last line aside (under the journal's lock) unless not
    `repair` (a read-only command: Optuna reads past a cut-off last line).

    Returns the side file that now holds the cut-off bytes, or None when nothing was cut off.
    """
    if not path.exists() or path.stat().st_size == 0:
        return None
    data = path.read_bytes()
    whole = _whole_lines(path, data)
    if whole == len(data) or not repair:
        return None
    lock.acquire()  # a live writer may be mid-line: look again under its lock
    try:
        data = path.read_bytes()
        whole = _whole_lines(path, data)
        return None if whole == len(data) else _set_aside(path, data[whole:], whole)
    finally:
        lock.release()


def _whole_lines(path: Path, data: bytes) -> int:
    """Bytes of `data` up to the end of its last whole line; raises JournalDamaged when a
    line before it is not an operation Optuna can replay."""
    whole = data.rfind(b"\n") + 1
    lines = data[:whole].splitlines()
    for number, line in enumerate(lines, start=1):
        if why := _problem(line):
            raise JournalDamaged(
                f"the Optuna journal {path} is damaged at line {number} (of {len(lines)}): "
                f"{why}, and it is not the last line, so it is not a cut-off write. Nothing "
                "was written. Restore the file from a backup, or move it aside to start the "
                "studies in it afresh.")
    return whole


def _problem(line: bytes) -> str | None:
    """Why `line` is not an operation Optuna can replay, or None."""
    try:
        entry = json.loads(line)
    except ValueError:
        return "it is not a whole operation"
    if not isinstance(entry, dict):
        return f"it is a JSON {type(entry).__name__}, not an operation"
    code = entry.get("op_code")
    if isinstance(code, bool) or code not in _FIELDS or not isinstance(entry.get("worker_id"),
                                                                      str):
        return f"it is no Optuna operation (op_code {code!r})"
    for key, kinds in _FIELDS[code].items():
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"its {key!r} is missing or of the wrong kind ({_OPERATIONS[code]})"
    return None


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
