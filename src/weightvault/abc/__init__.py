"""Interfaces only: implementations import these, never the other way round."""
