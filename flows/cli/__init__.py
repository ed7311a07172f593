"""``tqflow``: run and inspect batches from the command line (`flows.cli.commands`); the
options several commands share are declared once (`flows.cli.options`)."""

from flows.cli.commands import app, main

__all__ = ["app", "main"]
