"""The engine's side of ``actors``: the one public contract ``runtime`` and ``handler`` build on.

Step authors never need this package. It holds:

- the **actor host** that runs step invocations inside a worker process (``ActorHost``), and the
  **messages** it exchanges with the supervisor, with the ``Mailbox`` protocol an engine implements;
- the **graph** of a workflow as an engine reads it (``WorkflowSpec``, ``StepSpec``, ``spec_of``,
  ``validated_spec``);
- **describing a failure without trusting it** (``safe_text``, ``safe_traceback``, ``type_name``,
  ``add_note_safely``): reporting a step's error must not be able to fail;
- the **context hooks**: binding a ``Context`` to a backend (``bind_context``, ``follow_run``,
  ``continues_from``), the backend protocol and the markers that cross it (``MISSING``, ``WaitRequest``).

    supervisor --Invoke/LoadWorkflow/Reply/CancelInvocations--> Mailbox --> ActorHost (in the worker)
    ActorHost --Done/Failed/Cancelled/Suspended/Emit/Publish/Request/Ready--> Mailbox --> supervisor
"""

from ..context import MISSING, ContextBackend, WaitRequest
from ..decorators import StepSpec
from ..validation import validate
from ..workflow import WorkflowSpec
from .backend import WorkerBackend
from .hooks import bind_context, continues_from, follow_run, spec_of, validated_spec
from .host import ActorHost
from .safe import add_note_safely, safe_text, safe_traceback, type_name
from .protocol import (
    CancelInvocations, Cancelled, Done, DropWorkflow, Emit, Failed, Invoke, LoadWorkflow, Mailbox, Packed,
    Publish, Ready, Reply, Request, Shutdown, Suspended,
)

__all__ = [
    "MISSING",
    "ActorHost",
    "CancelInvocations",
    "Cancelled",
    "ContextBackend",
    "Done",
    "DropWorkflow",
    "Emit",
    "Failed",
    "Invoke",
    "LoadWorkflow",
    "Mailbox",
    "Packed",
    "Publish",
    "Ready",
    "Reply",
    "Request",
    "Shutdown",
    "StepSpec",
    "Suspended",
    "WaitRequest",
    "WorkerBackend",
    "WorkflowSpec",
    "add_note_safely",
    "bind_context",
    "continues_from",
    "follow_run",
    "safe_text",
    "safe_traceback",
    "spec_of",
    "type_name",
    "validate",
    "validated_spec",
]
