"""The operation journal: every update, durable in SQLite before the caller hears of it.

- ``store``: ``Journal``, the database: queued writes, reads that return ``OperationRecord``s;
- ``schema``: the tables, and how a row becomes a record;
- ``commit``: one group of writes in one transaction, and the writer thread;
- ``policy``: ``CommitPolicy``, whether the next group commits on the loop or the writer thread.
"""

from service.journal.policy import CommitPolicy
from service.journal.store import Journal

__all__ = ["CommitPolicy", "Journal"]
