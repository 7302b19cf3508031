"""What a step asks of the worker that runs it: CPUs, GPUs, memory, custom resources (Ray's names).

    @step(num_gpus=1)                          a worker holding one GPU
    @step(num_cpus=4, memory=8 * 2**30)        four CPUs and 8 GiB reserved for it
    @step(resources={"accelerator": 1})        a custom resource, as a Ray node declares it
    @step(scheduling_strategy="SPREAD")        a Ray scheduling strategy for the worker's actor

``@step(...)`` records a ``ResourceRequest`` on the step. On ``RayRuntime`` the step runs only on a worker
whose *shape* (the resources its actor reserved) covers the request, and the pool starts workers of the
shapes waiting steps need. ``ProcessRuntime`` runs every step on this machine: there a request is checked
when the run starts (a GPU this machine lacks, a custom resource, more CPUs or memory than it has are a
``WorkflowValidationError`` naming the step) and otherwise reserves nothing.

A shape is a ``ResourceRequest`` too, with every field filled in by the engine (``covers`` compares them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import WorkflowValidationError

_RESERVED = {"CPU", "GPU", "memory", "object_store_memory"}


@dataclass(frozen=True, slots=True)
class ResourceRequest:
    """Resources for one step's worker; ``None`` leaves a field to the engine's default.

    ``resources`` may be given as a dict; it is kept as sorted ``(name, amount)`` pairs so that requests
    hash and compare by value (``resource_dict()`` gives the dict back). ``scheduling_strategy`` compares by
    a key made of its fields (Ray's strategy objects have no equality of their own).
    """

    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: float | None = None
    resources: tuple[tuple[str, float], ...] | Mapping[str, float] = ()
    scheduling_strategy: Any = field(default=None, compare=False, hash=False)
    _strategy_key: str | None = field(default=None, init=False, repr=False)
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate("ResourceRequest")

    @classmethod
    def of(cls, *, num_cpus: float | None = None, num_gpus: float | None = None, memory: float | None = None,
           resources: Mapping[str, float] | None = None, scheduling_strategy: Any = None,
           where: str = "step") -> ResourceRequest | None:
        """A checked request, or None when nothing is asked; a bad value is a ``WorkflowValidationError``
        naming ``where`` (as ``step(num_gpus=-1)``)."""
        if num_cpus is None and num_gpus is None and memory is None and not resources \
                and scheduling_strategy is None:
            return None
        request = object.__new__(cls)  # as the constructor, but with ``where`` in its messages
        for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus), ("memory", memory),
                            ("resources", resources or ()), ("scheduling_strategy", scheduling_strategy)):
            object.__setattr__(request, name, value)
        request._validate(where)
        return request

    def _validate(self, where: str) -> None:
        for name in ("num_cpus", "num_gpus", "memory"):
            value = getattr(self, name)
            _check_amount(where, name, value)
            object.__setattr__(self, name, None if value is None else float(value))
        given = self.resources
        if isinstance(given, Mapping):
            items = list(given.items())
        elif isinstance(given, (tuple, list)) and all(isinstance(p, tuple) and len(p) == 2 for p in given):
            items = list(given)
        else:
            raise WorkflowValidationError(f"{where}(resources={given!r}): resources must be a dict of "
                                          "name -> amount")
        pairs: list[tuple[str, float]] = []
        for name, amount in items:
            if not isinstance(name, str) or not name:
                raise WorkflowValidationError(f"{where}(resources=...): resource names are strings, not "
                                              f"{name!r}")
            if name in _RESERVED:
                raise WorkflowValidationError(
                    f"{where}(resources={{{name!r}: ...}}): use num_cpus=, num_gpus= or memory= for {name}")
            _check_amount(where, f"resources[{name!r}]", amount)
            pairs.append((name, float(amount)))
        object.__setattr__(self, "resources", tuple(sorted(pairs)))
        object.__setattr__(self, "_strategy_key", _key(self.scheduling_strategy))
        object.__setattr__(self, "_hash", hash(self._fields()))

    # Requests are dict keys on the scheduler's hot path: hashed once, compared by identity first.
    def _fields(self) -> tuple[Any, ...]:
        return (self.num_cpus, self.num_gpus, self.memory, self.resources, self._strategy_key)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, ResourceRequest):
            return NotImplemented
        return self._hash == other._hash and self._fields() == other._fields()

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt through the constructor: string hashes differ between processes.
        return (ResourceRequest, (self.num_cpus, self.num_gpus, self.memory, self.resources,
                                  self.scheduling_strategy))

    def resource_dict(self) -> dict[str, float]:
        return dict(self.resources)  # type: ignore[arg-type]  # pairs, once __post_init__ has run

    def merged_over(self, default: ResourceRequest) -> ResourceRequest:
        """This request with what it leaves open taken from ``default`` (custom resources as a whole: a
        request naming any replaces the default's, as Ray's ``.options(resources=...)`` does)."""
        merged = self.resource_dict() if self.resources else default.resource_dict()
        strategy = self.scheduling_strategy if self._strategy_key is not None else default.scheduling_strategy
        return ResourceRequest(
            self.num_cpus if self.num_cpus is not None else default.num_cpus,
            self.num_gpus if self.num_gpus is not None else default.num_gpus,
            self.memory if self.memory is not None else default.memory,
            tuple(merged.items()), strategy)

    def covers(self, need: ResourceRequest) -> bool:
        """Whether a worker of this shape holds everything ``need`` asks (an unset field asks nothing)."""
        if (need.num_cpus or 0) > (self.num_cpus or 0) or (need.num_gpus or 0) > (self.num_gpus or 0):
            return False
        if (need.memory or 0) > (self.memory or 0):
            return False
        have = self.resource_dict()
        if any(amount > have.get(name, 0.0) for name, amount in need.resource_dict().items()):
            return False
        return need._strategy_key is None or need._strategy_key == self._strategy_key

    def bundle(self) -> dict[str, float]:
        """The request as a Ray resource bundle ({"CPU": 1, "GPU": 1, "memory": ..., "red": 1})."""
        out = {"CPU": self.num_cpus or 0.0, "GPU": self.num_gpus or 0.0, "memory": self.memory or 0.0,
               **self.resource_dict()}
        return {name: amount for name, amount in out.items() if amount}

    def size(self) -> tuple[float, ...]:
        """An order from small to big shapes: a step goes to the smallest worker that covers it."""
        return (self.num_gpus or 0.0, sum(self.resource_dict().values()), float(len(self.resources)),
                self.num_cpus or 0.0, self.memory or 0.0)

    def describe(self) -> str:
        """``num_gpus=1, resources={'red': 1}``: the request as the step wrote it."""
        parts = [f"{name}={_num(value)}" for name, value in
                 (("num_cpus", self.num_cpus), ("num_gpus", self.num_gpus), ("memory", self.memory))
                 if value is not None]
        if self.resources:
            pairs = ", ".join(f"{n!r}: {_num(a)}" for n, a in self.resource_dict().items())
            parts.append("resources={" + pairs + "}")
        if self._strategy_key is not None:
            parts.append(f"scheduling_strategy={self._strategy_key}")
        return ", ".join(parts) or "nothing"


def _check_amount(where: str, name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise WorkflowValidationError(f"{where}({name}={value!r}): {name} must be a number >= 0")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _key(strategy: Any) -> str | None:
    if strategy is None:
        return None
    return strategy if isinstance(strategy, str) else f"{type(strategy).__name__}({_fields(strategy)})"


def _fields(obj: Any) -> str:
    attrs = getattr(obj, "__dict__", None)
    if not attrs:
        return repr(obj)
    return ", ".join(f"{k}={v!r}" for k, v in sorted(attrs.items()))
