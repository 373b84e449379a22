"""Architecture search over skip topologies: a space file -> sampled DSL specs -> trained and
measured trials in an Optuna study (NSGA-II / TPE; SQLite or PostgreSQL; Optuna or Ray Tune).

    >>> from skipdsl.search import SearchRun, run_search, load_space
    >>> run_search(dataset="nuclei2d", trials=12, budget="smoke", out="runs/search")
    >>> opts = SearchRun(dataset="nuclei2d", trials=400, budget="cpu", out="runs/s5",
    ...                  space="skip5", objectives=("iou",), prune="halving", params="unetsharp")
    >>> run_search(opts)                       # a checked config object; keywords replace fields

Optuna, Ray and matplotlib are imported by the functions that use them.
"""
from .objective import OBJECTIVES, SearchConfig
from .oneshot import OneShotRun, run_oneshot
from .runner import SearchRun, rebuild_outputs, run_search
from .space import SearchSpace, list_spaces, load_space, loads_space, scale_spec
from .study import SearchError

__all__ = ["run_search", "SearchRun", "run_oneshot", "OneShotRun", "rebuild_outputs", "load_space", "loads_space", "list_spaces",
           "SearchSpace", "SearchConfig", "SearchError", "OBJECTIVES", "scale_spec"]
