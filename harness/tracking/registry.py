"""The final model in MLflow's Model Registry, as a model any MLflow client can load and call.

Finalize logs the chosen model as an MLflow pyfunc model on the final run and registers it as a
new version of the registered model `registry.name` (default: the study's name), with alias
`champion` and its dev and test figures as version tags. Then, in any process with the harness
installed:

    model = mlflow.pyfunc.load_model("models:/quick@champion")
    model.predict(["em", "sh"])
    # a DataFrame, one row per prefix: prefix, completion (a name sampled from the prefix,
    # seeded: params={"seed": 0}), next_char (the probability of each next character; '.'
    # ends the name)

With harness.tracking.runs, in the one floor that imports mlflow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.pyfunc import PythonModel

from harness.tracking.store import call, quiet
from harness.training.model import complete, load_model

log = logging.getLogger(__name__)

ALIAS = "champion"


class NamesModel(PythonModel):
    """A harness model file behind MLflow's pyfunc interface."""

    def load_context(self, context: Any) -> None:
        self.model, self.hp, self.itos = load_model(Path(context.artifacts["weights"]))

    def predict(self, context: Any, model_input: list[str],
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Prefixes (a list of strings, or a DataFrame whose first column holds them) -> a
        DataFrame, one row per prefix: prefix, completion, next_char."""
        if isinstance(model_input, pd.DataFrame):
            model_input = model_input.iloc[:, 0].tolist()
        prefixes = [str(p) for p in model_input]
        seed = int((params or {}).get("seed", 0))
        rows = complete(self.model, self.itos, prefixes, seed=seed)
        return pd.DataFrame({"prefix": prefixes, "completion": [c for c, _ in rows],
                             "next_char": [p for _, p in rows]})


def register(tracking_uri: str, run_id: str, weights: Path, name: str,
             tags: Mapping[str, str]) -> str:
    """Log `weights` as a pyfunc model on run `run_id`, register it as a new version of `name`
    (unless that run registered one already) with alias `champion` and `tags`; returns the
    version. Raises TrackingError."""

    def log_and_register() -> str:
        quiet()
        mlflow.set_tracking_uri(tracking_uri)
        client = mlflow.MlflowClient(tracking_uri)
        earlier = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        if earlier:  # registered by an interrupted finalize of the same result
            version = str(max(int(v.version) for v in earlier))
        else:
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=NamesModel(), artifacts={"weights": str(weights)},
                    pip_requirements=["torch", "mlflow", "pandas"],
                    registered_model_name=name)
            version = str(info.registered_model_version)
        client.set_registered_model_alias(name, ALIAS, version)
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        return version

    return call(tracking_uri, log_and_register)


def load(uri: str, tracking_uri: str) -> tuple[Any, Any, tuple[str, ...]]:
    """The harness model behind a registered model URI (e.g. models:/quick@champion):
    (MLP, HParams, itos). Raises TrackingError."""

    def fetch() -> NamesModel:
        mlflow.set_tracking_uri(tracking_uri)
        return mlflow.pyfunc.load_model(uri).unwrap_python_model()

    names = call(tracking_uri, fetch)
    return names.model, names.hp, names.itos
