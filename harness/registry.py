"""A generic name -> item registry with duplicate detection and "did you mean ...?"."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Items of one kind (``"distiller"``, ``"dataset"``...), each owned by a source distribution.

    Registering a taken name raises :class:`DuplicateNameError` naming both sources, and marks the
    name as conflicting: looking it up then fails too, rather than silently picking one plugin.
    """

    def __init__(self, kind: str, resolve: Callable[[Any], T] | None = None):
        self.kind = kind
        self._items: dict[str, tuple[T, str]] = {}
        self._conflicts: dict[str, list[str]] = {}
        # items registered by reference (e.g. a LazyDistiller) become the real item on first get()
        self._resolve = resolve

    def register(self, name: str, item: T, source: str) -> None:
        if name in self._items or name in self._conflicts:
            owners = self._conflicts.setdefault(name, [self._items.pop(name)[1]] if name in self._items else [])
            owners.append(source)
            raise DuplicateNameError(
                f"{self.kind} '{name}' is registered by both {owners[0]} and {source}; "
                f"uninstall one, or choose plugins with HARNESS_PLUGINS"
            )
        self._items[name] = (item, source)

    def get(self, name: str) -> T:
        if name in self._conflicts:
            owners = " and ".join(self._conflicts[name])
            raise DuplicateNameError(
                f"{self.kind} '{name}' is registered by both {owners}; "
                f"uninstall one, or choose plugins with HARNESS_PLUGINS"
            )
        try:
            item, source = self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None
        if self._resolve is not None:
            resolved = self._resolve(item)
            if resolved is not item:
                self._items[name] = (resolved, source)
            return resolved
        return item

    def unknown_message(self, name: object) -> str:
        hint = self.suggest(str(name))
        known = ", ".join(sorted(self._items)) or "none registered"
        did_you_mean = f"; did you mean '{hint}'?" if hint else ""
        return f"unknown {self.kind} '{name}'{did_you_mean} (known: {known}; see `harness ls`)"

    def suggest(self, name: str) -> str | None:
        matches = difflib.get_close_matches(name, list(self._items), n=1, cutoff=0.6)
        return matches[0] if matches else None

    def source(self, name: str) -> str:
        """The distribution that registered ``name`` (without importing a by-reference item)."""
        if name not in self._items:
            self.get(name)  # raises the unknown/conflict error
        return self._items[name][1]

    def names(self, pattern: str | None = None) -> list[str]:
        names = sorted(self._items)
        if pattern:
            glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
            names = [n for n in names if fnmatch.fnmatch(n, glob)]
        return names

    def items(self) -> Iterator[tuple[str, T, str]]:
        """(name, item as registered, source): by-reference items are not resolved here."""
        for name in sorted(self._items):
            item, source = self._items[name]
            yield name, item, source

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
