"""The operation journal: its group commits on its own, and across gateway restarts."""
