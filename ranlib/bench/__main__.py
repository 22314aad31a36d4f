"""`python -m ranlib.bench ...`: see ranlib.bench.cli."""

import time

from .cli import main, process_age_seconds

if __name__ == "__main__":
    # --budget-seconds counts from the process's start, imports included
    raise SystemExit(main(started=time.perf_counter() - process_age_seconds()))
