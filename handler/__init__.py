"""``WorkflowHandler``: the user's face of a run, async and blocking, speaking only to the adapter."""

from ._handler import WorkflowHandler

__all__ = ["WorkflowHandler"]
