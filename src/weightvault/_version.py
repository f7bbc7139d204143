"""The package version, in a module of its own so formats can stamp files without importing
the package root."""

__version__ = "0.1.0"
