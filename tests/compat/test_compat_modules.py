"""Item 1: the module paths of llama-index-workflows exist under ``actors`` and export the same public names.

``EXPORTS`` is the spec: per module, the public names llama 2.26.1 exports (its ``__all__`` where it has one,
else the classes and functions the module defines, less the internals listed in ``INTERNAL``).
``test_the_export_table_is_complete_and_true_for_llama`` keeps the table honest against the installed llama.
"""

import importlib
import types
from typing import Any, ParamSpec, TypeVar

import pytest

from ._support import Impl, import_user_module, module_path

EXPORTS: dict[str, tuple[str, ...]] = {
    "": ("Context", "Workflow", "catch_error", "step"),
    "events": (
        "DictLikeModel", "Event", "EventType", "HumanResponseEvent", "InputRequiredEvent", "InternalDispatchEvent",
        "StartEvent", "StepFailedEvent", "StepState", "StepStateChanged", "StopEvent", "UnhandledEvent",
        "UnreconstructedException", "WorkflowCancelledEvent", "WorkflowFailedEvent", "WorkflowIdleEvent",
        "WorkflowTimedOutEvent",
    ),
    "errors": (
        "ContextSerdeError", "ContextStateError", "WorkflowCancelledByUser", "WorkflowConfigurationError",
        "WorkflowRuntimeError", "WorkflowStepDoesNotExistError", "WorkflowTimeoutError", "WorkflowValidationError",
    ),
    "decorators": ("catch_error", "step"),
    "context": ("BaseSerializer", "Context", "JsonSerializer", "PickleSerializer"),
    "retry_policy": (
        "ConstantDelayRetryPolicy", "ExponentialBackoffRetryPolicy", "RetryCondition", "RetryInfo", "RetryPolicy",
        "StopCondition", "WaitStrategy", "retry_all", "retry_always", "retry_any", "retry_if_exception",
        "retry_if_exception_cause_type", "retry_if_exception_message", "retry_if_exception_type",
        "retry_if_not_exception_message", "retry_if_not_exception_type", "retry_never", "retry_policy",
        "retry_unless_exception_type", "stop_after_attempt", "stop_after_delay", "stop_all", "stop_any",
        "stop_before_delay", "stop_never", "wait_chain", "wait_combine", "wait_exponential",
        "wait_exponential_jitter", "wait_fixed", "wait_full_jitter", "wait_incrementing", "wait_none",
        "wait_random", "wait_random_exponential",
    ),
    "resource": ("Resource", "ResourceConfig", "ResourceDefinition", "ResourceDescriptor", "ResourceManager"),
    "testing": ("WorkflowTestRunner",),
    "workflow": ("Workflow",),
    "handler": ("WorkflowHandler",),
}

# Defined in llama's modules but internal to its engine; not part of the compat spec.
INTERNAL: dict[str, set[str]] = {
    "events": {"CollectionReleaseEvent", "IdleReleasedEvent", "SerializableEvent"},
    "errors": {"WorkflowDone"},  # "Internal control-flow exception used to terminate workers at run end"
    "decorators": {"CatchErrorHandler", "StepConfig", "StepFunction", "make_step_function"},
    "workflow": {"WorkflowMeta"},
}

MODULES = sorted(EXPORTS)


def _label(module: str) -> str:
    return module or "top"


@pytest.mark.parametrize("module", MODULES, ids=_label)
def test_the_documented_module_path_exists(wf: Impl, module: str) -> None:
    path = module_path(wf.side, module)
    try:
        import_user_module(wf.side, module)
    except ImportError as exc:
        pytest.fail(f"{wf.side}: `import {path}` fails ({exc}); llama has `{module_path('llama', module)}`")


@pytest.mark.parametrize("module", MODULES, ids=_label)
def test_the_module_exports_the_documented_public_names(wf: Impl, module: str) -> None:
    path = module_path(wf.side, module)
    try:
        mod = import_user_module(wf.side, module)
    except ImportError:
        pytest.fail(f"{wf.side}: module {path} does not exist, so none of {list(EXPORTS[module])} can be "
                    f"imported from it")
    missing = [name for name in EXPORTS[module] if not hasattr(mod, name)]
    assert not missing, f"{wf.side}: {path} lacks {missing} (llama exports them from {module_path('llama', module)})"


def _own_public_names(mod: types.ModuleType) -> set[str]:
    if hasattr(mod, "__all__"):
        return set(mod.__all__)
    out = set()
    for name, value in vars(mod).items():
        if name.startswith("_") or isinstance(value, (types.ModuleType, TypeVar, ParamSpec)):
            continue
        if getattr(value, "__module__", None) == mod.__name__:
            out.add(name)
    return out


@pytest.mark.parametrize("module", MODULES, ids=_label)
def test_the_export_table_is_complete_and_true_for_llama(module: str) -> None:
    pytest.importorskip("workflows", reason="llama-index-workflows is not installed")
    mod = importlib.import_module(module_path("llama", module))
    absent = [name for name in EXPORTS[module] if not hasattr(mod, name)]
    assert not absent, f"the table lists {absent}, which llama's {mod.__name__} does not have"
    unlisted = _own_public_names(mod) - set(EXPORTS[module]) - INTERNAL.get(module, set())
    assert not unlisted, f"llama's {mod.__name__} exports {sorted(unlisted)}, missing from the table"


def test_the_error_classes_are_exceptions(wf: Impl) -> None:
    errors: Any = wf.errors
    not_exceptions = []
    for name in EXPORTS["errors"]:
        cls = getattr(errors, name, None)
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            not_exceptions.append(name)
    assert not not_exceptions, f"{wf.side}: {not_exceptions} are missing or not Exception subclasses"
