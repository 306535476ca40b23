"""The core's own plugin, loaded the way third-party plugins are: the executors (``inline``,
``process``, ``ray``; Ray itself is imported only when a grid uses it) and the ``file`` distiller
of ``harness eval``."""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def register_executors(register):
    from .executors.inline import InlineExecutor
    from .executors.process import ProcessExecutor
    from .executors.ray_executor import RayExecutor

    register(InlineExecutor)
    register(ProcessExecutor)
    register(RayExecutor)


@hookimpl
def register_distillers(register):
    from .evalset import FromFile

    register(FromFile)
