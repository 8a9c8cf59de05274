"""Ingest: turning event streams into store batches (never imports the HTTP side)."""
