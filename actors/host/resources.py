"""Resources inside a worker: built here, where the steps use them, and cached once per worker process.

The actor host asks for a step's resources before calling it (``inject`` on its loop for an async step,
``inject_blocking`` from the step thread for a ``def`` step: factories always run on the worker's loop, so an
async factory's client lives on the loop its steps use). ``cache=True`` resources live in ``PROCESS``, one
``ResourceManager`` for the whole worker process: a model is loaded, a client opened, once per worker, and
shared by every step of every run that worker hosts. Two steps asking at once share one build. See
``actors.resource`` for the user-facing rules.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ..decorators import StepSpec
from ..resource import ResourceManager

PROCESS = ResourceManager()


async def inject(spec: StepSpec, workflow: Any) -> dict[str, Any]:
    """``{parameter: value}`` for the step's resource parameters. A factory's exception propagates (it fails
    the step) with a note naming the resource and the step."""
    if not spec.resources:
        return {}
    preset = getattr(getattr(workflow, "resource_manager", None), "resources", None) or {}
    out: dict[str, Any] = {}
    for param, descriptor, annotation in spec.resources:
        descriptor.set_type_annotation(annotation)
        key = getattr(descriptor, "cache_key", descriptor.name)
        if descriptor.name in preset or key in preset:
            out[param] = preset[descriptor.name if descriptor.name in preset else key]
            continue
        try:
            out[param] = await PROCESS.get(descriptor)
        except Exception as exc:
            exc.add_note(f"raised while building the resource {key} for parameter '{param}' of "
                         f"step '{spec.name}' (in worker pid {os.getpid()})")
            raise
    return out


def inject_blocking(spec: StepSpec, workflow: Any, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """``inject`` from a thread other than the loop's (a ``def`` step's)."""
    if not spec.resources:
        return {}
    return asyncio.run_coroutine_threadsafe(inject(spec, workflow), loop).result()
