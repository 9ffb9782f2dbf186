"""Ray for `loraedit batch`: the session, and running tasks with stage-1 groups, retries and a progress bar.

Each task gets one GPU (`num_gpus=1`), or one CPU on a cluster without GPUs (the toy world, the tests).
A GPU task runs in a fresh worker process (`max_calls=1`), so one job's GPU memory never stays behind for
the next.

Retries are counted here, not by Ray's `max_retries`: a task whose worker died (killed, out of memory,
node lost) and a task that returned a retryable failure are both tried again, up to `retries` more
times, from one budget, and the summary can say how many tries each job took. A retried job continues
from its last checkpoint (the jobs run with resume on), so a kill costs at most the steps since it.

Ordering: items of the same group run one after the other for the first item only. The first (the
group's leader) runs alone; when it is finished, done or failed for good, the rest of its group is
released and runs in parallel. For loraedit that is "train stage 1 once, sample many": the leader leaves
the stage-1 LoRA in the shared cache folder and the followers find it there.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import InputError

#: Object store of a local Ray instance: the tasks pass only small job descriptions and summary rows, so
#: Ray's default (30 % of RAM in /dev/shm) would only take memory from the jobs.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class Session:
    """The Ray cluster the batch runs on, as the summary reports it."""

    address: str  # "local" for an instance started here
    started_here: bool
    startup_seconds: float  # connecting or starting, measured
    gpus: float
    cpus: float


@dataclass(frozen=True)
class Item:
    """One task: a unique name, the payload its function receives, and its group (None: no group)."""

    name: str
    payload: object
    group: str | None = None


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Session]:
    """Connect to `address` (ray://host:10001, or host:6379 from inside the cluster), else start a local Ray
    instance with `num_cpus` CPUs (default: this machine's) and no dashboard; an already initialised Ray (a
    test's shared session) is used as it is. A session started here is shut down on the way out."""
    try:
        import ray
    except ModuleNotFoundError:
        raise InputError("loraedit batch needs Ray: pip install 'loraedit[batch]'") from None
    started = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
        if address:
            try:
                ray.init(address=address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise InputError(f"--address {address}: cannot connect to Ray ({' '.join(str(exc).split())[:300]}): "
                                 "check the address (ray://HEAD:10001) and that the cluster is up") from None
        else:
            # address="local": a new instance even where `ray start` left one running (plain ray.init() would
            # join that one, and refuse num_cpus)
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
    try:
        resources = ray.cluster_resources()
        yield Session(address or ("local" if started_here else "already running"), started_here,
                      round(time.perf_counter() - started, 2), resources.get("GPU", 0.0), resources.get("CPU", 0.0))
    finally:
        if started_here:
            ray.shutdown()


def run_tasks(items: list[Item], fn: Callable[[object], dict], session: Session, *, retries: int = 0,
              progress: bool = True, on_result: Callable[[Item, dict], None] | None = None) -> dict[str, dict]:
    """Run `fn(item.payload)` for every item on the session's cluster; {item name: final result}.

    `fn` returns a dict with `status` ("done" or anything else: failed) and `retry` (whether another try may
    help); a task whose worker died becomes {"status": "failed", "retry": True, "error": ...}. The final result
    gets `tries`. `on_result(item, result)` is called as each item ends (e.g. to rewrite the summary).
    """
    import ray
    from tqdm import tqdm

    # A GPU task in a fresh worker each time (max_calls=1; Ray's default only for ray.remote(num_gpus=...), not
    # for .options()); CPU workers are reused (the toy world's jobs would each pay torch's import again).
    resources = {"num_gpus": 1, "max_calls": 1} if session.gpus >= 1 else {"num_cpus": 1}
    task = ray.remote(max_retries=0, retry_exceptions=False, **resources)(fn)
    followers: dict[str, list[Item]] = defaultdict(list)
    first: list[Item] = []
    for item in items:
        if item.group is not None and any(i.group == item.group for i in first):
            followers[item.group].append(item)
        else:
            first.append(item)
    running: dict[object, tuple[Item, int]] = {}
    results: dict[str, dict] = {}

    def submit(item: Item, tries: int) -> None:
        running[task.remote(item.payload)] = (item, tries)

    for item in first:
        submit(item, 1)
    bar = tqdm(total=len(items), unit="job", desc="batch", disable=not progress, dynamic_ncols=True)
    try:
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            item, tries = running.pop(ref)
            result = _result(ray, ref)
            if result.get("status") != "done" and result.get("retry") and tries <= retries:
                bar.write(f"batch: {item.name}: try {tries} failed ({result.get('error', '')[:200]}); trying again")
                submit(item, tries + 1)
                continue
            result = {k: v for k, v in result.items() if k != "retry"} | {"tries": tries}
            results[item.name] = result
            if item.group is not None:
                for follower in followers.pop(item.group, []):
                    submit(follower, 1)
            bar.set_postfix(done=sum(r["status"] == "done" for r in results.values()),
                            failed=sum(r["status"] != "done" for r in results.values()), refresh=False)
            bar.update(1)
            if on_result is not None:
                on_result(item, result)
    finally:
        bar.close()
        for ref in running:  # Ctrl-C or an error here: stop what still runs (checkpoints let it resume)
            ray.cancel(ref, force=True)
    return results


def _result(ray, ref) -> dict:
    """The task's returned dict, or a failed, retryable result when its worker died or it raised anyway."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # fn raised past its own handler (a BaseException)
        return {"status": "failed", "retry": True, "error": " ".join(str(exc.cause).split())[:300] or repr(exc.cause)}
    except ray.exceptions.RayError as exc:
        return {"status": "failed", "retry": True, "error": f"its worker died ({type(exc).__name__}: killed, out of "
                f"memory or its node was lost)"}
