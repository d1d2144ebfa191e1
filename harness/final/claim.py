"""The finalize claim: one process at a time finalizes a study, and the claim of a process that
died is taken over, never left for `--force` to clear.

Claims come in generations, each a compare-and-set in the study's storage
(`harness.search.claims`): the first process to take `finalize.G` holds generation G, and its
take names it (host, pid, the process's start, when it claimed). Another process that finds G
held asks whether that claimant still runs: on its own host by its process (the pid and its
start time, so that a reused pid is not mistaken for it), elsewhere by the beat the holder
records every `BEAT_S` seconds. A dead claimant's generation is passed over: the next process
takes G + 1, and of several that find it dead at once, exactly one wins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import optuna

from harness.errors import AlreadyFinalized
from harness.search import claims
from harness.util.processes import every, identity, runs

log = logging.getLogger(__name__)

KEY = "finalize"
BEAT_ATTR = "finalize.beat.{}"  # study user attr per generation: {"time": t, "released": b}
BEAT_S = 30.0  # how often the holder records that it lives
STALE_S = 300.0  # a claimant on another host without a beat for this long has died
_HELD_HERE: set[tuple[str, int]] = set()  # (study, generation) held by this process now


@dataclass(frozen=True)
class Claimant:
    """Who took a generation of the claim."""

    host: str | None
    pid: int | None
    process: str | None  # harness.util.processes.identity of the claimant
    since: float  # epoch seconds

    @classmethod
    def me(cls) -> Claimant:
        return cls(socket.gethostname(), os.getpid(), identity(), time.time())

    @classmethod
    def from_attrs(cls, d: dict[str, Any]) -> Claimant:
        """A take's attrs; a claim of an earlier harness names no one (all None)."""
        return cls(d.get("host"), d.get("pid"), d.get("process"), float(d.get("since", 0.0)))

    def to_attrs(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "process": self.process,
                "since": self.since}

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"process {self.pid} on {self.host} (since {when})"


@dataclass
class Held:
    """A held generation of the claim: `beating()` records that its holder lives."""

    study: optuna.Study
    generation: int

    @contextlib.contextmanager
    def beating(self) -> Iterator[None]:
        def beat() -> None:
            try:
                self.study.set_user_attr(BEAT_ATTR.format(self.generation),
                                         {"time": time.time()})
            except Exception:  # a missed beat is what STALE_S is for
                log.warning("could not record finalize's beat")

        try:
            with every(BEAT_S, beat, "finalize-beat"):
                yield
        finally:  # given up: the next finalize (in this process or elsewhere) need not wait
            _HELD_HERE.discard((self.study.study_name, self.generation))
            self.study.set_user_attr(BEAT_ATTR.format(self.generation),
                                     {"time": time.time(), "released": True})


def acquire(study: optuna.Study) -> Held:
    """Hold the study's finalize claim: the lowest generation not held by a live claimant.
    Raises AlreadyFinalized when a live process holds it."""
    me = Claimant.me()
    generation = 0
    while True:
        found = claims.takes(study, f"{KEY}.{generation}")
        if not found:
            rank, first = claims.take(study, f"{KEY}.{generation}", me.to_attrs())
            if rank == 0:
                _HELD_HERE.add((study.study_name, generation))
                return Held(study, generation)
            found = [first]  # another process took it a moment before
        holder = Claimant.from_attrs(found[0])
        if not released(study, generation):
            if lives(study, generation, holder):
                raise AlreadyFinalized(
                    f"study {study.study_name!r} is being finalized by {holder.describe()}; "
                    "wait for it to end (`harness status` shows the result), or stop it: its "
                    "claim is then taken over by the next finalize")
            log.warning("the finalize of study %s by %s died; taking it over",
                        study.study_name, holder.describe())
        generation += 1


def released(study: optuna.Study, generation: int) -> bool:
    """Whether the holder of `generation` gave it up as it ended (failed or not)."""
    return bool((study.user_attrs.get(BEAT_ATTR.format(generation)) or {}).get("released"))


def lives(study: optuna.Study, generation: int, c: Claimant) -> bool:
    """Whether the claimant of `generation` still runs."""
    if c.pid is None or c.host is None:  # an earlier harness's claim: long gone
        return False
    if c.host == socket.gethostname():
        if c.pid == os.getpid():  # this process: live while one of its threads holds it
            return (study.study_name, generation) in _HELD_HERE
        return runs(c.pid, c.process)
    beat = study.user_attrs.get(BEAT_ATTR.format(generation)) or {}
    return time.time() - float(beat.get("time", c.since)) < STALE_S
