"""Peak memory and time of one training step: hand-written reference, compiled, recompute.

    python benchmarks/memory.py --device cpu --out results/memory_cpu.md

The same program as ``bench memory``: the code is :mod:`skipdsl.bench.memory`; this script
only runs it under its own name.
"""
import sys
from pathlib import Path

try:
    import skipdsl  # noqa: F401
except ImportError:  # a checkout without an install: the package beside this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skipdsl.bench.memory import main as _main  # noqa: E402

if __name__ == "__main__":
    sys.exit(_main(prog="python benchmarks/memory.py"))
