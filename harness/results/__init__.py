"""The results floor: read-only views over a study's records (leaderboard, Pareto front
figures, plots, report) and the tools that train one recorded config again (reproduce,
lr-find)."""
