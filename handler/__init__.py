"""``WorkflowHandler``: the user's face of a run, async and blocking, speaking only to the adapter."""

from .handler import WorkflowHandler

__all__ = ["WorkflowHandler"]
