"""Updates as journaled operations: their records, failure policies, callers who leave,
request_id retries, validate_only and force, and what a failure or a lost answer reports."""
