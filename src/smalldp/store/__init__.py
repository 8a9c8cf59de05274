"""The SQLite store: one writer, many read-only readers."""
