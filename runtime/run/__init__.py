"""A run's state, owned by the supervisor thread: status, invocations, store, snapshots."""
