"""The bottom floor: paths and atomic writes, processes and threads, redaction, logging set-up,
provenance. It imports nothing of the harness above it."""
