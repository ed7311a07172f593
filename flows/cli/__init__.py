"""``tqflow``: run and inspect batches from the command line.

`flows.cli.app` is the application (command groups, ``--debug``, errors as sentences); each
``*_commands`` module registers one group of commands on it (batches, dead letters, blocks,
cluster sizing, the setup's check); the options several commands share are declared once (`flows.cli.options`).
"""

# Imported for the commands they register; `tqflow --help` lists commands in that order.
from flows.cli import (  # noqa: F401
    batch_commands,
    block_commands,
    cluster_commands,
    dead_letter_commands,
    doctor_commands,
)
from flows.cli.app import app, main

__all__ = ["app", "main"]
