"""Errors the harness reports to users as one clear line (no traceback).

Every error a user can fix (bad grid file, unknown plugin name, missing data...) is a
:class:`HarnessError`; the CLI prints ``error: <message>`` and exits with :attr:`exit_code`.
"""

from __future__ import annotations


def one_line(exc: BaseException, limit: int | None = 300) -> str:
    """``Type: first line of the message`` (cut to ``limit`` characters; None: whole): how a wrapped
    cause is quoted in an error line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit]}" if lines else f"{type(exc).__name__}: "


class HarnessError(Exception):
    """A problem the user can fix; its message names the problem and the fix."""

    exit_code = 2


class ConfigError(HarnessError):
    """The grid file, a ``--set`` override or a command-line option is invalid."""


class UnknownNameError(ConfigError):
    """A plugin name (distiller, dataset, architecture, executor) is not registered."""


class DuplicateNameError(HarnessError):
    """Two plugins registered the same name for the same kind of thing."""


class SpecError(HarnessError):
    """A plugin registered something that does not follow the plugin contract."""


class DatasetUnavailableError(HarnessError):
    """A dataset's files are not on this machine and cannot be downloaded.

    Plugins raise it from ``DatasetSpec.load`` with where they looked and how to get the data.
    """

    def __init__(self, dataset: str, looked_in: str, how_to_get: str):
        self.dataset, self.looked_in, self.how_to_get = dataset, looked_in, how_to_get
        super().__init__(f"dataset '{dataset}' is not available (looked in {looked_in}); {how_to_get}")


class TrialError(Exception):
    """A trial produced an unusable result (NaN/inf, wrong shapes); the grid goes on."""
