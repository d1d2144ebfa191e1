"""Claims: compare-and-set in the study's own storage.

Every Optuna storage numbers new trials in one order for all processes (a database
transaction, one ordered log in the journal), so a claim is a finished trial created in one
ledger study per storage (`harness-claims`), and of several processes that take the same key,
the one with the lowest trial number wins. Counters (sampler seeds, test evaluations) are the
ranks of the takes of one key; a value is settled by storing it with a take, the first take's
value being the one every caller gets.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from harness.search.storage import of

LEDGER = "harness-claims"  # one study per storage that holds every study's claims
CLAIM_SEP = "::"  # <study>::<key> names a claim
_CLAIM_ATTR = "claim"
_VALUE_ATTR = "value"  # what a take of `settle` proposed


def claim(study: optuna.Study, key: str) -> bool:
    """Take the claim `key` on `study`: True for exactly one of any number of racing callers."""
    return _take(study, key) == 0


def count(study: optuna.Study, key: str) -> int:
    """How often `key` was taken on `study` (claimed, or a counter drawn)."""
    s, ledger = _ledger(study)
    name = f"{study.study_name}{CLAIM_SEP}{key}"
    return sum(t.user_attrs.get(_CLAIM_ATTR) == name
               for t in s.get_all_trials(ledger, deepcopy=False))


def next_number(study: optuna.Study, counter: str) -> int:
    """A counter in the storage: 0, 1, 2, ... each number handed to one caller only."""
    return _take(study, counter)


def settle(study: optuna.Study, key: str, value: Any) -> Any:
    """Propose `value` (JSON-serializable) for `key` on `study` and return the first value
    proposed for it: any number of racing callers all get one value, whoever proposed it."""
    _, takes = _takes(study, key, {_VALUE_ATTR: value})
    return takes[0].user_attrs[_VALUE_ATTR]


def take(study: optuna.Study, key: str, attrs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Record a take of `key` holding `attrs` (JSON-serializable; one atomic write) and return
    its rank among all takes of `key` and the first take's attrs: a claim whose claimant the
    others can read, or a counted event recorded together with what it found."""
    mine, found = _takes(study, key, attrs)
    return [t.number for t in found].index(mine), _attrs(found[0])


def takes(study: optuna.Study, key: str) -> list[dict[str, Any]]:
    """The attrs of every take of `key` so far, in the order the storage numbered them."""
    s, ledger = _ledger(study)
    name = f"{study.study_name}{CLAIM_SEP}{key}"
    return [_attrs(t) for t in sorted((t for t in s.get_all_trials(ledger, deepcopy=False)
                                       if t.user_attrs.get(_CLAIM_ATTR) == name),
                                      key=lambda t: t.number)]


def _attrs(t: FrozenTrial) -> dict[str, Any]:
    return {k: v for k, v in t.user_attrs.items() if k != _CLAIM_ATTR}


def _take(study: optuna.Study, key: str) -> int:
    """Record a take of `key` and return its rank among all takes of `key`."""
    mine, takes = _takes(study, key)
    return [t.number for t in takes].index(mine)


def _takes(study: optuna.Study, key: str,
           attrs: dict[str, Any] | None = None) -> tuple[int, list[FrozenTrial]]:
    """Record a take of `key` in the ledger (one atomic trial creation, holding `attrs`) and
    return its trial number and every take of `key` so far in number order: the storage hands
    out trial numbers in one order to every process."""
    s, ledger = _ledger(study)
    name = f"{study.study_name}{CLAIM_SEP}{key}"
    template = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.0,
                                         user_attrs={_CLAIM_ATTR: name, **(attrs or {})})
    mine = s.get_trial_number_from_id(s.create_new_trial(ledger, template_trial=template))
    takes = sorted((t for t in s.get_all_trials(ledger, deepcopy=False)
                    if t.user_attrs.get(_CLAIM_ATTR) == name), key=lambda t: t.number)
    return mine, takes


def _ledger(study: optuna.Study) -> tuple[optuna.storages.BaseStorage, int]:
    """The storage's ledger study (created by the first process that needs it) and its id."""
    s = of(study)
    try:
        return s, s.get_study_id_from_name(LEDGER)
    except KeyError:
        pass
    try:
        return s, s.create_new_study([StudyDirection.MINIMIZE], LEDGER)
    except optuna.exceptions.DuplicatedStudyError:  # created by another process meanwhile
        return s, s.get_study_id_from_name(LEDGER)
