"""harness: hyperparameter search for character-level MLP language models.

Modules, one concept each: `data` (words, vocabulary, splits, context windows), `hparams`
(hyperparameters and their defaults), `model` (the MLP, sampling), `train` (the one training loop),
`spec` (study files), `study` (the Optuna study driver), `tracking` (MLflow), `leaderboard`
(trials as a table), `paths` (the results folder), `cli` (the `harness` command).
"""

__version__ = "0.1.0"
