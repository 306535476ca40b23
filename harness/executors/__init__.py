"""Executors run trials; the driver process consumes their results and is the only MLflow writer.

An executor is a class with a ``name`` and ``run(trials, run_trial)`` that yields one
:class:`harness.runner.TrialResult` per trial, in any order. The trials are the plan's
:class:`harness.plan.BoundTrial` objects (``.trial`` is the plain, picklable :class:`harness.trial.Trial`).
``run_trial(bound)`` never raises for a failing trial (it returns a FAILED result), so an executor
only has to move work and results.
Executors are registered with the ``register_executors`` hook; the core registers ``inline``.
"""
