"""The training floor: words -> vocabulary -> split -> windows (the test split sealed), the MLP,
the optimizer step, the one training loop, precision, and count-based baselines. It imports
torch, never Optuna or MLflow: it knows nothing of a search."""
