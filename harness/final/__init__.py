"""The final floor: candidates, retraining, choosing, the final rules (ensemble, fill), the one
test evaluation, and the result. Importing it registers every rule's result section."""

from harness.final import data_note as _data_note  # noqa: F401  (registers its section)
from harness.final import rules as _rules  # noqa: F401  (registers the rules' sections)
