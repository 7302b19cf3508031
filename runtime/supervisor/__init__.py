"""The supervisor: one uvloop loop, in its own thread, that owns every run and routes every event."""
