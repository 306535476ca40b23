"""The hooks a harness plugin may implement. Each receives a ``register`` callback.
The plugin author's guide is docs/plugins.md; the contract, docs/contract.md.

A plugin is a module exposed through the ``harness`` entry-point group::

    [project.entry-points.harness]
    my_plugin = "my_package.plugin"

and implements any of these hooks with ``@harness.hookimpl``. Plugin modules should import
heavy libraries (torch...) lazily, inside ``load``/``build``/``distill``: the CLI loads every
plugin to build its ``--help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from .specs import ArchitectureSpec, DatasetSpec

hookspec = pluggy.HookspecMarker("harness")
hookimpl = pluggy.HookimplMarker("harness")


@hookspec
def register_datasets(register: Callable[["DatasetSpec"], None]) -> None:
    """Register datasets: call ``register(harness.DatasetSpec(...))`` once per dataset."""


@hookspec
def register_architectures(register: Callable[["ArchitectureSpec"], None]) -> None:
    """Register architectures: call ``register(harness.ArchitectureSpec(...))`` once per architecture."""


@hookspec
def register_distillers(register: Callable[[type], None]) -> None:
    """Register distillers: call ``register(DistillerClass)`` (see :class:`harness.Distiller`)."""


@hookspec
def register_executors(register: Callable[[type], None]) -> None:
    """Register executors: classes with ``name`` and ``run(trials, run_trial)`` (see harness.executors)."""


@hookspec
def register_commands(cli: "click.Group") -> None:
    """Add click commands to the ``harness`` command group."""
