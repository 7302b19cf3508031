"""The step-side ``Context`` (``actors.context``): send, stream and collect events, the run's store, and the
serializers of its snapshots."""

from .backend import MISSING, ContextBackend, Suspend, WaitRequest
from .context import Context
from .serializers import BaseSerializer, JsonSerializer, PickleSerializer
from .state_store import DictState
from .store import Store

__all__ = [
    "MISSING", "BaseSerializer", "Context", "ContextBackend", "DictState", "JsonSerializer", "PickleSerializer",
    "Store", "Suspend", "WaitRequest",
]
