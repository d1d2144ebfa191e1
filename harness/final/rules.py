"""The final rules, in the order finalize applies them: each reshapes the chosen model before
the test split is read, and adds its section to the result. A new rule is a module of its own
(a `FinalRule` and its `Section`), a line here, and its key in the study file's schema."""

from __future__ import annotations

from harness.final.choose import FinalRule
from harness.final.ensemble import EnsembleRule
from harness.final.fill import FillRule
from harness.final.mix import MixRule

RULES: tuple[FinalRule, ...] = (EnsembleRule(), FillRule(), MixRule())
