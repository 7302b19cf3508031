"""Worker processes on this machine: launcher, per-worker channels, the worker's entry point."""
