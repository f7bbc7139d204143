"""Reusable test suites and hypothesis strategies, shipped so format plugins can use them too."""
