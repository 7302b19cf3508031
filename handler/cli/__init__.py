"""The ``procflow`` command: run a workflow with a live view, draw its graph."""
