"""Run a pipeline's shard tasks on Ray: a local instance by default, or an existing cluster.

The tasks are the same ``run_task(job)`` calls the local executor makes; each clears what an
earlier attempt left before it starts, so Ray may retry one safely. On a cluster every node
must see the inputs and ``output.dir`` at the same paths (a shared filesystem) and have lmforge
installed (or ship it with a Ray ``runtime_env``)::

    executor: ray
    ray_address: auto        # join the cluster this machine belongs to (`ray start --head` ...)

Ray is an optional dependency: ``pip install 'lmforge[cluster]'``.
"""

from __future__ import annotations

from typing import Callable

from lmforge.data.document import DataError
from lmforge.data.pipeline.task import run_task


def run_on_ray(jobs: list[dict], address: str | None, workers: int, on_done: Callable[[], None]) -> None:
    try:
        import ray
    except ImportError:
        raise DataError("executor: ray needs the ray package: pip install 'lmforge[cluster]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        # A local instance gets `workers` CPUs; a cluster brings its own.
        ray.init(
            address=address,
            num_cpus=workers if address is None else None,
            include_dashboard=False,
            log_to_driver=True,
            configure_logging=False,
        )
    try:
        remote = ray.remote(num_cpus=1, max_retries=2)(run_task)
        pending = [remote.remote(job) for job in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)  # a task's exception is raised here
            on_done()
    finally:
        if started_here:
            ray.shutdown()
