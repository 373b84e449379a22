"""Where trials run, shared by the benchmark sweep (``bench``) and the search (``search``): the
CPU cores this process may use, and a Ray for one run (a local one, or a running cluster).

Ray is imported inside :func:`ray_session` only (``import skipdsl`` stays light).
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["cpu_count", "ray_session", "LOCAL_RAY_ENV", "local_ray_env"]

#: The environment of a Ray this process starts for itself (a throw-away cluster on this
#: machine, on the loopback address): no token authentication (``RAY_AUTH_MODE``: Ray 2.5x
#: enables it for a new local cluster and warns), no probe of an outside address for this
#: machine's IP (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: Ray's switch for "local Ray only",
#: which binds the node to 127.0.0.1 instead of asking the route to 8.8.8.8), no usage
#: statistics. A value the user set is kept; joining a cluster (``address``) sets none.
LOCAL_RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                 "RAY_USAGE_STATS_ENABLED": "0"}


def cpu_count() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextmanager
def local_ray_env(address: str | None = None) -> Iterator[None]:
    """:data:`LOCAL_RAY_ENV` (where unset) while this process starts and uses a local Ray, i.e.
    ``address`` is None; the variables it set are removed on leaving, so later processes
    (another Ray joining a cluster) do not inherit them. Enter it before ``ray`` is first
    imported: Ray reads these variables at import."""
    added = {} if address else {k: v for k, v in LOCAL_RAY_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextmanager
def ray_session(*, address: str | None = None, num_cpus: int | None = None,
                gpus: bool = False, verbose: bool = False,
                env: dict[str, str] | None = None) -> Iterator[Any]:
    """Ray for one run; yields the ``ray`` module.

    A Ray already initialised in this process is used as it is (and left running). Otherwise
    ``address`` joins a running cluster (``ray start --head`` / ``ray start --address``), or a
    local Ray starts with ``num_cpus`` CPUs (default: :func:`cpu_count`) and, with ``gpus``,
    every visible CUDA device; it is shut down on leaving. Workers get this checkout on their
    ``PYTHONPATH`` (same machine or a shared file system; an installed skipdsl works anywhere)
    and the variables of ``env``. ``verbose`` forwards the workers' logs to this process. A
    local Ray runs with :data:`LOCAL_RAY_ENV` (:func:`local_ray_env`).
    """
    with local_ray_env(address):
        import ray

        with _session(ray, address=address, num_cpus=num_cpus, gpus=gpus, verbose=verbose,
                      env=env):
            yield ray


@contextmanager
def _session(ray: Any, *, address: str | None, num_cpus: int | None, gpus: bool,
             verbose: bool, env: dict[str, str] | None) -> Iterator[None]:
    """Initialise Ray unless it is (see :func:`ray_session`); shut it down on leaving."""
    started = False
    if not ray.is_initialized():
        pkg_root = str(Path(__file__).resolve().parents[1])
        env_vars = {"PYTHONPATH": os.pathsep.join(p for p in (pkg_root,
                                                               os.environ.get("PYTHONPATH"))
                                                  if p), **(env or {})}
        kw: dict[str, Any] = dict(runtime_env={"env_vars": env_vars}, log_to_driver=verbose,
                                  logging_level=logging.INFO if verbose else logging.WARNING)
        if address:
            ray.init(address=address, **kw)
        else:
            import torch

            ray.init(address="local", num_cpus=num_cpus or cpu_count(),
                     num_gpus=torch.cuda.device_count() if gpus else 0,
                     include_dashboard=False, **kw)
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()
