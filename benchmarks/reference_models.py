"""The hand-written baselines that ``bench speed`` races; the code lives in the package,
:mod:`skipdsl.bench.reference_models` (so an installed skipdsl has it), and this file keeps the
old import path working: ``from benchmarks.reference_models import REFERENCE_MODELS``.
"""
from skipdsl.bench.reference_models import *  # noqa: F401,F403
from skipdsl.bench.reference_models import __all__  # noqa: F401
