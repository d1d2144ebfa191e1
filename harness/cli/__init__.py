"""The CLI floor: the `harness` command. Parsing (`parser`), the commands (`run`, `look`), the
progress display (`progress`) and the text each result is shown as (`render`)."""

from harness.cli.main import main

__all__ = ["main"]
