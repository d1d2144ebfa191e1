"""The config floor: hyperparameters and their defaults, the study file's schema, YAML and
`--set` loading, validation. Nothing here imports torch, Optuna or MLflow, so a study file
with an error is reported at once."""

from harness.config.loading import load_mapping, load_spec, parse_assignments
from harness.config.schema import DataConfig, StudySpec

__all__ = ["DataConfig", "StudySpec", "load_mapping", "load_spec", "parse_assignments"]
