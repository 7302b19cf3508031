"""The kinds of worker a pool can run: local processes, and Ray actors (the ``ray`` extra)."""
