"""Race each compiled zoo model against the hand-written eager module of the same architecture
(:mod:`benchmarks.reference_models`): the same weights, timed interleaved, with ratios.

    python benchmarks/speed.py --models unet,unetsharp --device cpu --out results/speed_cpu.md
    python benchmarks/speed.py --device cuda --dims 3 --fast --out results/speed_cuda_3d.md

The measurement is :mod:`skipdsl.bench.speed` (``bench speed``, which times your own specs
alone); this script hands it the project's hand-written UNet family to race.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ and a checkout

from benchmarks.reference_models import REFERENCE_MODELS  # noqa: E402
from skipdsl.bench.speed import *  # noqa: E402,F401,F403
from skipdsl.bench.speed import main as _main  # noqa: E402
from skipdsl.bench.speed import parse_args as _parse_args  # noqa: E402

PROG = "python benchmarks/speed.py"


def parse_args(argv=None, prog: str = PROG):
    """The race's command line (:func:`skipdsl.bench.speed.parse_args` with the references)."""
    return _parse_args(argv, prog=prog, references=REFERENCE_MODELS)


def main(argv=None, prog: str = PROG) -> int:
    return _main(argv, prog=prog, references=REFERENCE_MODELS)


if __name__ == "__main__":
    sys.exit(main())
