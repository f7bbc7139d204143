"""Framework-free building blocks: dtypes, bounded I/O, checksums, the tree spec, printing."""
