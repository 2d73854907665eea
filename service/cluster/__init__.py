"""Replicas on one PostgreSQL database (``database_url``): the shared database, leases that
give each instance exactly one owner, and forwarding calls to that owner.

Without ``database_url`` none of this is loaded: one process serves every instance.
"""
