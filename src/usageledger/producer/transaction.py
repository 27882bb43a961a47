"""How a producer operation gets its transaction (SPEC §3: each operation is one transaction).

Given an Engine, an operation opens a connection, runs one transaction and commits it. Given a
Connection outside a transaction, it begins one and commits it. Given a Connection already inside
a transaction, it joins that transaction and leaves the commit (or rollback) to the caller: the
simulator and the race tests use this to hold a producer transaction open between statements.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeAlias

from sqlalchemy.engine import Connection, Engine

Bind: TypeAlias = Engine | Connection


@contextmanager
def one_transaction(bind: Bind) -> Iterator[Connection]:
    """The connection of the one transaction a producer operation runs in.

    Each backend keeps its default isolation level (MariaDB: REPEATABLE READ), which is what the
    P2 first-read rule is about. A joined transaction is not committed here; if the operation
    fails, the caller must roll it back.
    """
    if isinstance(bind, Engine):
        with bind.connect() as conn, conn.begin():
            yield conn
    elif bind.in_transaction():
        yield bind
    else:
        with bind.begin():
            yield bind
