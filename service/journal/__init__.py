"""The operation journal: every update, durable before the caller hears of it.

- ``protocol``: ``JournalStore``, what ``Operations`` asks of a journal, and its errors;
- ``store``: ``Journal``, SQLite in the data directory: queued writes, reads that return
  ``OperationRecord``s; ``sqlite``: that journal as a ``JournalStore``, reads off the loop;
- ``postgres``: ``PostgresJournal``, the tables replicas share, each write fenced by a lease;
- ``schema``: the tables, and how a row (of either database) becomes a record;
- ``commit``: one group of writes in one transaction, and the writer thread;
- ``policy``: ``CommitPolicy``, whether the next group commits on the loop or the writer thread.

``postgres`` is imported only with ``database_url`` (it loads asyncpg).
"""

from service.journal.policy import CommitPolicy
from service.journal.store import Journal

__all__ = ["CommitPolicy", "Journal"]
