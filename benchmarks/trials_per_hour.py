"""Trials per device-hour: the same K trials run one at a time on the device, then N at a time.

    python benchmarks/trials_per_hour.py --device cuda --concurrency 4 --trials 8 --budget short \
        --out results/trials_per_hour_cuda.md

The code is :mod:`skipdsl.bench.trials_per_hour` (inside the package, so an installed skipdsl
has it; ``python -m skipdsl.bench.trials_per_hour`` is the same program); this script only runs
it under its own name.
"""
import sys
from pathlib import Path

try:
    import skipdsl  # noqa: F401
except ImportError:  # a checkout without an install: the package beside this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skipdsl.bench.trials_per_hour import *  # noqa: E402,F401,F403 (the old import path)
from skipdsl.bench.trials_per_hour import main as _main  # noqa: E402

PROG = "python benchmarks/trials_per_hour.py"


def main(argv=None, prog: str = PROG) -> int:
    return _main(argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
