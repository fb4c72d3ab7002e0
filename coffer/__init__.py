"""Coffer: a strongly consistent wallet ledger."""

__version__ = "0.1.0"
