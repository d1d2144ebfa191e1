"""A study remembers its data: the fingerprint of its words (harness.training.data.Fingerprint)
is recorded when it is created, and every process that works on it (a worker, finalize,
reproduce, sample) compares the data it reads with it, and refuses other data with a message
that says what changed. `--allow-data-change` accepts the change instead: the study records
it (so every process that joins agrees), and the final result says so.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import optuna

from harness.config import StudySpec
from harness.errors import DataChanged
from harness.search import records
from harness.search.records import StudyRecord
from harness.training.data import Fingerprint, fingerprint

log = logging.getLogger(__name__)


def first_record(spec: StudySpec) -> dict[str, Any]:
    """The data section of a new study's record."""
    return {**_plain(fingerprint(spec.data)), "accepted": []}


def check(spec: StudySpec, study: optuna.Study, record: StudyRecord,
          allow: bool = False) -> StudyRecord:
    """`record`, when the data is what it recorded (or it recorded none); with `allow`, the
    record with the change accepted (and stored). Raises DataChanged otherwise."""
    if record.data is None:
        return record
    now = fingerprint(spec.data)
    changes = now.changes(_fingerprint(record.data))
    if not changes:
        return record
    where = spec.data.path or "the bundled names"
    if not allow:
        raise DataChanged(
            f"the data of study {spec.name!r} ({where}) changed since it was created: "
            f"{'; '.join(changes)}. Restore it, or accept the change with --allow-data-change "
            "(the study records it, and its final result says so)")
    log.warning("study %s: its data changed (%s); accepted (--allow-data-change)", spec.name,
                "; ".join(changes))
    accepted = [*record.data.get("accepted", []), {"time": time.time(), "changes": changes}]
    record = dataclasses.replace(record, data={**_plain(now), "accepted": accepted})
    records.write_record(study, record)
    return record


def accepted(record: StudyRecord | None) -> list[dict[str, Any]]:
    """The data changes the study accepted, oldest first."""
    return list((record.data or {}).get("accepted", [])) if record else []


def _plain(fp: Fingerprint) -> dict[str, Any]:
    return {"sha256": fp.sha256, "bytes": fp.bytes, "words": list(fp.words)}


def _fingerprint(d: dict[str, Any]) -> Fingerprint:
    train, dev, test = (int(n) for n in d["words"])
    return Fingerprint(str(d["sha256"]), int(d["bytes"]), (train, dev, test))
