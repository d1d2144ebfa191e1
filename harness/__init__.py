"""harness: hyperparameter search for character-level MLP language models.

Modules, one concept each, from the bottom up:

- `data`: words, vocabulary, splits, context windows; the sealed test split
- `hparams`: hyperparameters and their defaults (the one source of them)
- `model`: the MLP, sampling, the model file
- `steps`: one optimizer step (hand-written backward, autograd reference, CUDA graph)
- `train`: the one training loop, used by trials and the final model alike
- `spec`: study files -> a validated StudySpec
- `journal`: damage in the embedded journal storage, found before writing
- `storage`: the Optuna storage, claims (compare-and-set), what a study was created with
- `trials`: what a trial is in storage (TrialRecord), the counting rules, the reaper
- `samplers`: the spec's sampler and pruner, and its space in Optuna's terms
- `pareto`: Pareto mode's front (dev loss against size or time) and finalize's pick rules
- `checkpoints`: trial checkpoints on disk (and on a tracking server), for resuming retries
- `events`: progress events the search and finalize report to an observer
- `study`: creating or joining a study, the objective, one worker's trial loop
- `coordinator`: run-study: local worker processes, progress, leaderboard, figures
- `final`: the final model, the only reader of the test split (FinalResult)
- `tracking`: MLflow runs; with `registry` (the final model as an MLflow model) the only
  modules that import mlflow
- `provenance` (code, packages, machine, command), `reproduce` (retrain a recorded trial),
  `report` (a study as one Markdown file)
- `leaderboard`, `plots`, `lr_find`, `baseline` (count-based n-grams): looking at results
- `paths` (the results folder), `redact` (masking passwords), `logs` (logging set-up)
- `cli`: the `harness` command (`python -m harness` too): parsing and printing only
"""

__version__ = "0.1.0"
