"""Thin, lazily imported adapters between frameworks and weightvault's numpy core."""
