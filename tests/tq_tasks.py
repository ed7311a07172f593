"""Tasks written the python-task-queue way, to prove its bodies drain with tqflow's worker."""

from pathlib import Path

from taskqueue import RegisteredTask, queueable


@queueable
def power(base: int, exponent: int = 2) -> int:
    return base**exponent


class WriteTask(RegisteredTask):
    def __init__(self, path: str, text: str):
        super().__init__(path, text)

    def execute(self):
        Path(self.path).write_text(self.text)
