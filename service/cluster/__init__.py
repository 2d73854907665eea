"""Replicas on one PostgreSQL database (``database_url``): the shared database, leases that
give each instance exactly one owner, and forwarding calls to that owner.

Without ``database_url`` none of this is loaded: one process serves every instance.
"""


class DatabaseError(Exception):
    """The shared database cannot be used; the message says why in one line and never quotes
    the URL (its password). Defined here, apart from the driver, so that the command line can
    name it without loading asyncpg."""
