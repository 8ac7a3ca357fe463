"""Data-subject rights: erasure of a user everywhere and data access (export of what is held)."""
