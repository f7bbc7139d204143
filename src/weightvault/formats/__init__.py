"""One module per weight-file format, each behind :class:`weightvault.abc.format.Format`."""
