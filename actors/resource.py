"""Resources injected into steps (LlamaIndex's ``workflows.resource``).

A step parameter annotated ``Annotated[T, Resource(factory)]`` receives ``factory()``'s value; the factory may
be async, and may itself take resources the same way. ``Annotated[Model, ResourceConfig("file.json",
path_selector="a.b")]`` receives the pydantic ``Model`` read from that part of a JSON file.

**Lifetime under procflow.** Steps run in worker processes, so resources are built *in the workers*, where the
steps use them:

- ``Resource(factory)`` (``cache=True``, the default) is built **once per worker process**, the first time a
  step on that worker needs it, and then shared by every step of every run on that worker (of any workflow
  naming the same factory). This is the place to load a model or open a client: once per worker, not once per
  step. Steps on different workers get different instances (each worker built its own); they are never
  shipped between processes, so they need not be picklable.
- ``Resource(factory, cache=False)`` is built for every injection.
- A factory that raises fails the step (and its retries run, as for any failure); the exception is the
  factory's own, with a note naming the resource and the step.
- Values set with ``await resource_manager.set(name, value)`` on the ``ResourceManager`` given to
  ``Workflow(resource_manager=...)`` travel to the workers with the workflow (so they must be picklable) and
  win over the factory of that name (its ``__qualname__``, as in LlamaIndex Workflows).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
from pathlib import Path
from typing import Annotated, Any, Callable, Generic, Protocol, TypeVar, get_args, get_origin, get_type_hints, \
    runtime_checkable

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


@runtime_checkable
class ResourceDescriptor(Protocol):
    """What ``Resource(...)`` and ``ResourceConfig(...)`` return."""

    @property
    def name(self) -> str: ...

    @property
    def cache(self) -> bool: ...

    async def resolve(self, manager: ResourceManager) -> Any: ...

    def set_type_annotation(self, type_annotation: Any) -> None: ...

    def set_localns(self, localns: dict[str, Any] | None) -> None: ...

    def get_dependencies(self) -> list[tuple[str, ResourceDescriptor, Any]]: ...


def resource_parameters(fn: Callable[..., Any], localns: dict[str, Any] | None = None
                        ) -> list[tuple[str, ResourceDescriptor, Any]]:
    """``(parameter, descriptor, T)`` for each parameter of ``fn`` annotated ``Annotated[T, descriptor]``."""
    try:
        hints = get_type_hints(fn, localns=localns, include_extras=True)
    except Exception:  # noqa: BLE001 -- unresolvable annotations name no resource
        hints = {}
    found = []
    for param in inspect.signature(fn).parameters.values():
        ann = hints.get(param.name, param.annotation)
        if get_origin(ann) is Annotated:
            base, *meta = get_args(ann)
            for item in meta:
                if isinstance(item, ResourceDescriptor):
                    item.set_type_annotation(base)
                    found.append((param.name, item, base))
                    break
    return found


class FactoryResource(Generic[T]):
    """``Resource(factory, cache)``: the value of ``factory(**its resources)``."""

    def __init__(self, factory: Callable[..., Any], cache: bool) -> None:
        if not callable(factory):
            raise TypeError(f"Resource() takes a callable factory, not {factory!r}")
        self.factory = factory
        self.cache = cache
        self.name = getattr(factory, "__qualname__", type(factory).__name__)  # LlamaIndex's name
        # What the per-process cache is keyed by: the module too, since one worker hosts many workflows.
        self.cache_key = f"{getattr(factory, '__module__', '?')}.{self.name}"
        self._localns: dict[str, Any] | None = None

    def set_type_annotation(self, type_annotation: Any) -> None:
        pass

    def set_localns(self, localns: dict[str, Any] | None) -> None:
        self._localns = localns

    def get_dependencies(self) -> list[tuple[str, ResourceDescriptor, Any]]:
        return resource_parameters(self.factory, self._localns)

    async def resolve(self, manager: ResourceManager) -> Any:
        value = self.factory(**await manager.resolve_all(self.get_dependencies(), (self.name,)))
        if inspect.isawaitable(value):
            value = await value
        return value

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_localns": None}  # a class body's namespace need not travel

    def __repr__(self) -> str:
        return f"Resource({self.name}, cache={self.cache})"


@functools.lru_cache(maxsize=128)
def _config_section(path: str, selector: str | None) -> Any:
    with open(path) as f:
        data = json.load(f)
    for key in selector.split(".") if selector else []:
        data = data.get(key) if isinstance(data, dict) else None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: no object at {selector!r}")
    return data


class ConfigResource:
    """``ResourceConfig(...)``: a pydantic model read from (a part of) a JSON file; always cached."""

    cache = True

    def __init__(self, config_file: str, path_selector: str | None = None, label: str | None = None,
                 description: str | None = None, cls_factory: type[BaseModel] | None = None) -> None:
        if Path(config_file).suffix != ".json":
            raise ValueError(f"ResourceConfig reads JSON files only, not {config_file!r}")
        self.config_file, self.path_selector = config_file, path_selector
        self.label, self.description = label, description
        self.cls_factory = cls_factory

    @property
    def name(self) -> str:
        return self.config_file + (f".{self.path_selector}" if self.path_selector else "")

    def set_type_annotation(self, type_annotation: Any) -> None:
        if self.cls_factory is None and isinstance(type_annotation, type) \
                and issubclass(type_annotation, BaseModel):
            self.cls_factory = type_annotation

    def set_localns(self, localns: dict[str, Any] | None) -> None:
        pass

    def get_dependencies(self) -> list[tuple[str, ResourceDescriptor, Any]]:
        return []

    def call(self) -> BaseModel:
        """Read the file and build the model (a missing file or a wrong value raises)."""
        if self.cls_factory is None:
            raise ValueError(f"ResourceConfig({self.config_file!r}) annotates no pydantic model class")
        path = Path(self.config_file)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {self.config_file}")
        return self.cls_factory.model_validate(_config_section(str(path.resolve()), self.path_selector))

    async def resolve(self, manager: ResourceManager) -> Any:
        return self.call()

    def __repr__(self) -> str:
        return f"ResourceConfig({self.name})"


def Resource(factory: Callable[..., Any], cache: bool = True) -> FactoryResource[Any]:  # noqa: N802
    """Inject ``factory()``'s value into a step: ``x: Annotated[T, Resource(factory)]``. With ``cache`` (the
    default) one value per worker process is built and shared (see the module docstring)."""
    return FactoryResource(factory, cache)


def ResourceConfig(config_file: str, path_selector: str | None = None, label: str | None = None,  # noqa: N802
                   description: str | None = None) -> ConfigResource:
    """Inject a pydantic model read from a JSON file (the part at ``path_selector``, dotted)."""
    return ConfigResource(config_file, path_selector, label, description)


class ResourceDefinition(BaseModel):
    """A step parameter that receives a resource: its ``name``, the ``resource``, and the annotated type."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    resource: Any
    type_annotation: Any = None


class ResourceManager:
    """Builds and caches resources by name. Under procflow every worker process has one (the cache of
    ``cache=True`` resources); the one given to ``Workflow(resource_manager=...)`` contributes the values set
    on it."""

    def __init__(self) -> None:
        self.resources: dict[str, Any] = {}
        self._building: dict[str, asyncio.Future[Any]] = {}

    async def set(self, name: str, val: Any) -> None:
        """Make ``val`` the value of the resources named ``name``."""
        self.resources[name] = val

    def get_all(self) -> dict[str, Any]:
        return self.resources

    def __getstate__(self) -> dict[str, Any]:
        return {"resources": self.resources}  # builds in progress belong to this process

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.resources = state["resources"]
        self._building = {}

    async def get(self, resource: ResourceDescriptor, _chain: tuple[str, ...] = ()) -> Any:
        """The value of ``resource``: cached (once built, or while being built by another step), else
        built now."""
        name = getattr(resource, "cache_key", resource.name)
        if name in _chain:
            raise ValueError(f"circular resource dependency: {' -> '.join((*_chain, name))}")
        if resource.cache:
            while name not in self.resources and (building := self._building.get(name)) is not None:
                try:
                    return await asyncio.shield(building)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if not building.cancelled() or (task is not None and task.cancelling()):
                        raise  # this step itself is being cancelled
                    # the step that was building it was cancelled: build it here (or wait for another)
            if name in self.resources:
                return self.resources[name]
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._building[name] = fut
            try:
                value = await self._build(resource, (*_chain, name))
            except asyncio.CancelledError:
                fut.cancel()  # the step asking was cancelled: another one asking builds it again
                raise
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # retrieved: a build nobody else awaited must not log
                raise
            finally:
                self._building.pop(name, None)
            self.resources[name] = value
            fut.set_result(value)
            return value
        return await self._build(resource, (*_chain, name))

    async def _build(self, resource: ResourceDescriptor, chain: tuple[str, ...]) -> Any:
        if isinstance(resource, FactoryResource):
            deps = await self.resolve_all(resource.get_dependencies(), chain)
            value = resource.factory(**deps)
            if inspect.isawaitable(value):
                value = await value
            return value
        return await resource.resolve(self)

    async def resolve_all(self, params: list[tuple[str, ResourceDescriptor, Any]], chain: tuple[str, ...] = ()
                          ) -> dict[str, Any]:
        """``{parameter: value}`` for resource parameters."""
        out = {}
        for param, descriptor, type_annotation in params:
            descriptor.set_type_annotation(type_annotation)
            out[param] = await self.get(descriptor, chain)
        return out


__all__ = ["Resource", "ResourceConfig", "ResourceDefinition", "ResourceDescriptor", "ResourceManager"]
