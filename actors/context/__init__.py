"""The step-side ``Context`` (``actors.context``): send, stream and collect events, and the run's store."""

from .backend import MISSING, ContextBackend, Suspend, WaitRequest
from .context import Context
from .store import Store

__all__ = ["MISSING", "Context", "ContextBackend", "Store", "Suspend", "WaitRequest"]
