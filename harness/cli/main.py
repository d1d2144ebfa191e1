"""The `harness` command's entry point: parse, validate the study files, run the command, and
map every error to its exit status in one place.

Study files are validated before torch, Optuna or MLflow is imported, so a file with an error
is reported at once; the commands (and the libraries they need) are imported after.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from harness.cli.parser import build_parser
from harness.config import StudySpec, load_spec
from harness.errors import EXIT_FAILED, EXIT_INTERRUPTED, HarnessError
from harness.util import logs, paths, provenance
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
        paths = args.study if isinstance(args.study, list) else [args.study]  # init: none
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
    except Exception as exc:  # the last resort: a fault the harness did not foresee
        where = _keep_traceback()
        print(f"error: {type(exc).__name__} in `harness {args.command}`: "
              f"{redact(str(exc).strip().splitlines()[0] if str(exc).strip() else '')} "
              f"(an unexpected fault; the full traceback is in {where})", file=sys.stderr)
        return EXIT_FAILED


def _keep_traceback() -> str:
    """Write the current exception's traceback to a file under the results root (else the
    system's temporary folder); returns where."""
    text = redact(traceback.format_exc())
    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    for folder in (lambda: paths.root() / "errors", lambda: Path(tempfile.gettempdir())):
        try:
            path = folder() / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return str(path)
        except (OSError, HarnessError):
            continue
    return "nowhere (no folder could be written): run again with -v to see it"


if __name__ == "__main__":
    sys.exit(main())
