"""Errors for user mistakes. Kept import-free so the CLI can name them without loading numpy or torch."""


class StoreError(ValueError):
    """A run cannot be written or read as asked (the message says why and what to do)."""
