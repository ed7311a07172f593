"""Where a worker's time goes, beside the raw loop: pyinstrument profiles of both over the same
no-op tasks (``pip install pyinstrument`` first; it is not a tqflow dependency).

    python -m bench.profile_worker [N]
"""

from __future__ import annotations

import logging
import sys

from bench.worker_bench import raw_loop_seconds, worker_seconds


def main() -> None:
    from pyinstrument import Profiler

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    logging.getLogger("tqflow").setLevel(logging.WARNING)
    for name, measure in [("tqflow worker", worker_seconds), ("raw loop", raw_loop_seconds)]:
        profiler = Profiler(interval=0.0005)
        profiler.start()
        seconds = measure(n)
        profiler.stop()
        print(
            f"==== {name}: {seconds:.2f} s for {n:,} tasks ({n / seconds:,.0f} tasks/s, profiler on)"
        )
        print(profiler.output_text(unicode=False, color=False))


if __name__ == "__main__":
    main()
