"""An importable item source for the enqueue tests."""


def five_roots():
    yield from range(10, 15)
