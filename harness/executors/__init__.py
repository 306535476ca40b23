"""Executors run trials; the driver process consumes their results and is the only MLflow writer.

An executor is a class with a ``name`` and ``run(trials, run_trial)`` that yields one
:class:`harness.runner.TrialResult` per trial, in any order. The trials are the plan's
:class:`harness.plan.BoundTrial` objects (``.trial`` is the plain, picklable :class:`harness.trial.Trial`).
``run_trial(bound)`` never raises for a failing trial (it returns a FAILED result), so an executor
only has to move work and results. ``run_trial(bound, compute=f)`` runs the trial's compute
elsewhere: the driver still creates, claims and ends the trial's run and streams its curves, and
calls ``f(bound, ctx)``, which returns the TrialResult and may forward curve points to
``ctx.stream(step, metrics)`` as they arrive; ``run_trial`` is thread-safe, so an executor may call
it from several threads at once (``process`` does: one thread per worker slot).
An executor that takes a ``workers`` keyword gets ``harness bench --workers N``. Two optional methods:
``start(trials, ctx)``, called with the trials to run and the grid's
:class:`harness.runner.TrialContext` before the driver sets MLflow up (so workers can start up
meanwhile), and ``close(kill=False)``, always called at the end (``kill=True`` when the driver was
interrupted or failed).
Executors are registered with the ``register_executors`` hook; the core registers ``inline``,
``process`` and ``ray`` (:mod:`harness.core_plugin`). A constructor may take ``workers`` (``--workers``), ``address``
(``--ray-address``) and ``resources`` (the grid's ``[resources]`` table).
An executor whose ``run`` waits on threads should wait with :func:`as_they_finish`, so that Ctrl-C
and SIGTERM reach the driver whichever thread the kernel hands them to.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

WAKE_SECONDS = 0.5


def as_they_finish(futures: Iterable[Any], wake_seconds: float = WAKE_SECONDS) -> Iterator[Any]:
    """``futures`` as they finish (those finishing together in the order given), like
    :func:`concurrent.futures.as_completed`, but waking the calling thread every ``wake_seconds``.

    Why: Python runs signal handlers in the main thread only, between bytecodes. The kernel may hand
    a process's SIGINT (Ctrl-C) or SIGTERM to any of its threads; when it picks an executor's thread,
    a main thread blocked in ``as_completed`` keeps sleeping until a trial ends: Ctrl-C does nothing
    for a whole trial (the likely cause of a test run whose process-executor driver ran on for 300 s
    after SIGINT). Waking it lets the pending handler run within ``wake_seconds``."""
    from concurrent.futures import FIRST_COMPLETED, wait

    index = {future: i for i, future in enumerate(futures)}
    pending = set(index)
    while pending:
        done, pending = wait(pending, timeout=wake_seconds, return_when=FIRST_COMPLETED)
        yield from sorted(done, key=index.__getitem__)
