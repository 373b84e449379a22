"""Race each compiled zoo model against the hand-written eager module of the same architecture.

    python benchmarks/speed.py --models unet,unetsharp --device cpu --out results/speed_cpu.md
    python benchmarks/speed.py --device cuda --dims 3 --fast --out results/speed_cuda_3d.md

The same program as ``bench speed``: the code is :mod:`skipdsl.bench.speed` (inside the
package, so an installed skipdsl has it); this script only runs it under its own name.
"""
import sys
from pathlib import Path

try:
    import skipdsl  # noqa: F401
except ImportError:  # a checkout without an install: the package beside this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skipdsl.bench.speed import *  # noqa: E402,F401,F403 (the old import path keeps working)
from skipdsl.bench.speed import main as _main  # noqa: E402

PROG = "python benchmarks/speed.py"


def main(argv=None, prog: str = PROG) -> int:
    return _main(argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
