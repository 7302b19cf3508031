"""The supervisor: one uvloop loop, in its own thread, that owns every run and routes every event.

``door`` (the one way in), ``supervisor`` (run lifecycle), ``routing``, ``scheduler``, ``messages`` (from
workers), ``failures`` (errors, deaths, retries, kills), ``report`` (step events, verbose lines).
"""

from runtime.supervisor.supervisor import Supervisor, SupervisorState

__all__ = ["Supervisor", "SupervisorState"]
