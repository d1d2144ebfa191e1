"""The search floor: the Optuna storage (its private members in one place), claims, trial and
study records, the space, samplers and pruners, stop rules, the objective, the worker loop,
local workers, warm start. It cannot import the final floor: no trial can reach the test
evaluation."""
