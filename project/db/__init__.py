"""Database plumbing: the SQLite backend (its write queue and connection lending) and the
executor that lends async stream views their database reads."""
