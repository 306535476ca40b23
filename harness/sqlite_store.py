"""A local sqlite MLflow store: its first use serialised across processes, its write-ahead log."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from .errors import HarnessError


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise the first use of a sqlite store across processes: MLflow creating (migrating) one
    fresh store from two processes at once fails. Other stores need no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(uri[len("sqlite:///"):] + ".lock")
    try:
        handle = open(lock, "a+")
    except OSError as exc:  # a read-only or missing directory: the store cannot be written either
        raise HarnessError(f"cannot use MLflow tracking store {uri}: {exc.strerror} ({lock}); "
                           f"check --tracking-uri") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_ahead(engine: Any) -> None:
    """Put a sqlite store in write-ahead-log mode, committed without a sync per transaction.

    MLflow commits about two dozen times per logged trial; with sqlite's default rollback journal
    each commit syncs the journal and the file, a quarter of the store's time per trial here
    (results/perf.md, both journals timed in one run). In WAL mode with ``synchronous=NORMAL`` a commit appends to
    the log and the log is synced at checkpoints: a process that dies (Ctrl-C, ``kill -9``) loses no
    committed run; a power cut may roll back the last commits, never corrupt the store (sqlite's
    documented guarantee), and a rolled-back trial is rerun by the next bench. Readers such as the
    MLflow UI no longer block the driver's writes. WAL needs a local file system (as sqlite's
    locking does); where it cannot be set (a read-only store), the store keeps its journal."""
    if engine is None or engine.dialect.name != "sqlite":
        return
    from sqlalchemy import event

    if not event.contains(engine, "connect", _wal_pragmas):
        event.listen(engine, "connect", _wal_pragmas)
        engine.dispose()  # the connections opened before (MLflow's schema check) reconnect with it


def _wal_pragmas(dbapi_connection: Any, _record: Any) -> None:
    try:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")  # kept in the file; a no-op once set
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")  # per connection
    except Exception:  # noqa: BLE001 - an optimisation: a store that refuses it works as before
        pass
