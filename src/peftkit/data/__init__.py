"""Data stage: read built-in or user data, validate it, split it, and write it to the run directory."""

from peftkit.data.prepare import PreparedData, prepare_data, read_split

__all__ = ["PreparedData", "prepare_data", "read_split"]
