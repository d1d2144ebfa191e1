"""The `harness` command's entry point: parse, validate the study files, run the command, and
map every error to its exit status in one place.

Study files are validated before torch, Optuna or MLflow is imported, so a file with an error
is reported at once; the commands (and the libraries they need) are imported after.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from harness.cli.parser import build_parser
from harness.config import StudySpec, load_spec
from harness.errors import EXIT_INTERRUPTED, HarnessError
from harness.util import logs, provenance
from harness.util.processes import sigterm_as_interrupt
from harness.util.redact import redact


def load(args: argparse.Namespace, path: str) -> StudySpec:
    """The study file at `path` with --set, --storage, --tracking-uri and --enqueue applied."""
    values: dict[str, object] = {}
    if getattr(args, "storage", None):
        values["storage"] = args.storage
    if getattr(args, "tracking_uri", None):
        values["tracking.uri"] = args.tracking_uri
    spec = load_spec(path, args.set, values)
    if getattr(args, "enqueue", None):  # after the file's own enqueue list
        values["enqueue"] = [*(spec.raw.get("enqueue") or []), *args.enqueue]
        spec = load_spec(path, args.set, values)
    return spec


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `harness` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    provenance.set_command(sys.argv[1:] if argv is None else argv)
    try:
        paths = args.study if isinstance(args.study, list) else [args.study]
        specs = [load(args, path) for path in paths]
        logs.configure(args.verbose)
        # Torch, Optuna and MLflow load here, once the study files are known to be valid.
        from harness.cli.commands import COMMANDS

        with sigterm_as_interrupt():
            return COMMANDS[args.command](args, specs)
    except HarnessError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
