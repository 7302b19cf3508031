"""Small workflows for the argument tests (loaded by ``procflow`` as a file or as a module)."""

from actors import StartEvent, StopEvent, Workflow, step


class Hi(Workflow):
    @step
    def hi(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=f"hi {ev.get('name')} {ev.get('n')}")


class TypedStart(StartEvent):
    x: int


class Typed(Workflow):
    @step
    def double(self, ev: TypedStart) -> StopEvent:
        return StopEvent(result=ev.x * 2)
