"""Every error the harness raises on purpose, under one root that carries the exit status.

`HarnessError.exit_code` is what the `harness` command exits with when the error reaches it:
2 for input the user can correct before anything runs (`InputError`), 1 for the rest. The CLI
maps errors to exit statuses in one place, by this attribute alone. Each class keeps the
builtin base it had before (ValueError, RuntimeError, LookupError), so callers that caught
those still do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

EXIT_FAILED = 1
EXIT_USAGE = 2  # a bad study file, data file or argument: nothing was run
EXIT_INTERRUPTED = 130


class HarnessError(Exception):
    """The root of the harness's errors; `exit_code` is the command's exit status."""

    exit_code: int = EXIT_FAILED


class InputError(HarnessError):
    """Input the user can correct (a file, a value, an argument), found before anything ran."""

    exit_code = EXIT_USAGE


# -- input (exit 2)


class SpecError(InputError, ValueError):
    """A study file (or its overrides) is invalid. `errors` holds every problem found."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        n = len(self.errors)
        super().__init__(f"{source}: {n} error{'s' if n != 1 else ''} in the study file\n{lines}")


class DataError(InputError, ValueError):
    """The data file or the split cannot be used; the message says why."""


class DataChanged(DataError):
    """The data file differs from the one the study was created on."""


class BudgetConflict(InputError, ValueError):
    """A joining worker's study file disagrees with what the study recorded: a budget set on
    its command line, or fixed.precision auto where the study chose none."""


# -- stores (exit 1)


class StudyNotFound(HarnessError, LookupError):
    """The study file's study has not been run yet (nothing in its storage)."""


class StorageError(HarnessError, RuntimeError):
    """The Optuna storage cannot be opened (unreachable or misspelled URL)."""


class JournalDamaged(StorageError):
    """A line in the middle of the journal is not a whole operation."""


class TrackingError(HarnessError, RuntimeError):
    """The tracking store cannot be reached or used."""


class ModelFileError(HarnessError, ValueError):
    """A model file that is not a harness model, or that would need code to be unpickled."""


# -- the search and training


class SealedSplitError(HarnessError, RuntimeError):
    """Something asked for the test split while a search was running."""


class TrainingDiverged(HarnessError, RuntimeError):
    """The loss became NaN, infinite, or far worse than guessing; training cannot recover."""

    def __init__(self, step: int, what: str, value: float, limit: float) -> None:
        finite = math.isfinite(value)
        why = f"above the divergence limit {limit:.2f}" if finite else "not finite"
        super().__init__(f"training diverged: {what} {value:.4g} at step {step} is {why}")
        self.step = step
        self.what = what
        self.value = value


class TrialLost(HarnessError, RuntimeError):
    """Another process failed this worker's trial while it trained (a stale heartbeat)."""

    @classmethod
    def at(cls, number: int, step: int) -> TrialLost:
        return cls(f"trial {number} was failed by another worker (its heartbeat went stale) "
                   f"at step {step}; stopped training")


class MemoryBudgetExceeded(HarnessError, MemoryError):
    """A config, a sampling run or a model file would need more memory than this machine has
    free; nothing was allocated. A trial records it as its failure and the study goes on."""


class WorkersFailed(HarnessError, RuntimeError):
    """Worker processes kept dying while trials remained."""


# -- the final model and results


class NothingToFinalize(HarnessError, RuntimeError):
    """The study has no complete trial to choose from, or no final model yet."""


class AlreadyFinalized(HarnessError, RuntimeError):
    """The study's test split was already evaluated (or another process is finalizing it).
    `result` is the recorded final result (a FinalResult), when there is one."""

    def __init__(self, message: str, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result


class CannotReproduce(HarnessError, ValueError):
    """The trial does not exist or never trained."""
