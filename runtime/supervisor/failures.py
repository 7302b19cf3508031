"""Failures: a step that raised, a worker that died, a step that will not stop, and retries.

    Failed(inv, error)         -> retry_or_fail: the step's retry policy gives a delay (a PendingRetry on the
                                  run, holding the step's slot), or, once it gives up, the step's
                                  @catch_error handler gets a StepFailedEvent, or the run fails with the
                                  step's error
    worker death (sentinel)    -> on_death: each invocation it held is run again only if nothing it did is
                                  visible yet; otherwise its run fails with WorkerCrashedError
    stop_invocations(run)      -> unplaced ones are dropped, async ones cancelled (CancelInvocations), and
                                  with ``hard`` the workers running its ``def`` steps (which run nothing
                                  else) are killed
    an async step ignoring its cancel for ``cancel_grace`` -> its worker is retired: it takes no new work
                                  and is killed once it holds no live run's work, so a kill for one run's
                                  sake never touches another run

The rule that keeps results right: procflow itself runs an invocation again from its start only while
nothing it did has reached the run (``Invocation.visible``). Re-running one whose events were already
routed, whose stream items were published or whose store writes happened would do them twice (a
``collect_events`` completing on duplicates, a wrong result); such a run fails with ``WorkerCrashedError``
instead. The one exception is the step's own retry policy: its author asked for the step to run again after
a failure, and a crash is a failure like a raise (what the failed attempt did stays done, as after a raise).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from actors import PayloadError, RemoteTraceback, StepFailedEvent, WorkerCrashedError, WorkflowRuntimeError
from actors.host import CancelInvocations, Failed, Packed, add_note_safely, safe_text, type_name

from runtime.run.state import PendingRetry, RetryState, RunStatus, StepInput
from runtime.supervisor import report

if TYPE_CHECKING:
    from runtime.pool.worker import Worker
    from runtime.run.state import Invocation, RunState
    from runtime.supervisor.supervisor import Supervisor

log = logging.getLogger("procflow")


class Failures:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    # --- a step raised ---------------------------------------------------------------------------------
    def on_failed(self, worker: Worker, msg: Failed) -> None:
        inv = self.sup.invocations.get(msg.inv)
        if inv is None:
            return
        self.sup.scheduler.release(inv)
        if not inv.run.status.accepts_work:
            return
        report.step_changed(inv.run, inv, "failed")
        exc = self._error(inv, msg, worker)
        self.retry_or_fail(inv, exc)

    def _error(self, inv: Invocation, msg: Failed, worker: Worker) -> BaseException:
        try:
            exc = self.sup.codec.unpack(msg.error)
        except PayloadError as err:
            exc = WorkflowRuntimeError(f"step '{inv.step}' raised {msg.error.type_name}, which the parent "
                                       f"cannot unpickle: {err}")
        if not isinstance(exc, BaseException):
            exc = WorkflowRuntimeError(f"step '{inv.step}' raised {msg.error.type_name}, which unpickles as "
                                       f"a {type_name(exc)}, not an exception")
        try:
            exc.__cause__ = RemoteTraceback(msg.traceback)
        except BaseException:  # noqa: BLE001 -- a hostile exception may refuse a cause: report it without
            pass
        add_note_safely(exc, f"raised in step '{inv.step}' of {inv.run.wspec.name} run {inv.run.run_id} "
                             f"({worker.describe()})")
        try:
            hint = worker.link.explain(msg.traceback)  # e.g. a module the worker's machine lacks: the fix
        except Exception:  # noqa: BLE001 -- a hint is a nicety; reporting the failure is not
            hint = None
        if hint:
            add_note_safely(exc, hint)
        return exc

    def retry_or_fail(self, inv: Invocation, exc: BaseException) -> None:
        """The invocation failed (raised, or its worker died): its step's retry policy decides whether it runs
        again. ``policy.next(elapsed, attempts, error)`` gets the failures so far, from 1 (LlamaIndex's
        counting: ``stop_after_attempt(3)`` means three executions). Once the policy gives up, a
        ``@catch_error`` handler covering the step gets a ``StepFailedEvent``, else the run fails."""
        run, policy = inv.run, inv.run.wspec.steps[inv.step].retry_policy
        delay = None
        elapsed = time.monotonic() - inv.first_try
        if policy is not None and isinstance(exc, Exception):
            try:
                delay = policy.next(elapsed, inv.attempt, exc)
            except Exception as err:  # noqa: BLE001 -- the user's policy raising ends the run, named
                exc = WorkflowRuntimeError(f"step '{inv.step}': its retry policy raised {err!r}")
        if delay is None:
            if not self.recover(inv, exc, elapsed):
                self.sup.fail(run, exc, inv.step, inv.attempt, elapsed)
            return
        log.info("procflow: retrying step '%s' of run %s in %.3g s (attempt %d failed: %s)",
                 inv.step, run.run_id, delay, inv.attempt, safe_text(exc))
        run.active[inv.step] += 1  # the retry holds the step's slot while it waits
        timer = self.sup.loop.call_later(max(0.0, float(delay)), self._retry, run, inv.inv)
        try:
            last_error: Packed | None = self.sup.codec.pack(exc)
        except PayloadError:
            last_error = None
        run.retries[inv.inv] = PendingRetry(timer, inv.step, inv.again(),
                                            RetryState(inv.attempt + 1, inv.first_try, last_error, time.time()))

    def recover(self, inv: Invocation, exc: BaseException, elapsed: float) -> bool:
        """Hand the failure to the ``@catch_error`` handler covering the step, as a ``StepFailedEvent``; False
        when there is none, the failed step is a handler itself, or the handler's recovery budget along this
        chain of events is spent (the run then fails with the step's error)."""
        run = inv.run
        handler = run.wspec.handler_for.get(inv.step)
        if handler is None or not isinstance(exc, Exception):
            return False
        used = dict(inv.recoveries).get(handler, 0)
        if used >= run.wspec.steps[handler].max_recoveries:
            return False
        try:
            failed = StepFailedEvent(
                step_name=inv.step, input_event=self.sup.codec.unpack(inv.event), exception=exc,
                attempts=inv.attempt, elapsed_seconds=elapsed, failed_at=datetime.now(timezone.utc))
            packed = self.sup.codec.pack(failed, keys=run.class_keys)
        except Exception as err:  # noqa: BLE001 -- the run fails with the step's error, the reason logged
            log.warning("procflow: step '%s' of run %s failed and its @catch_error handler '%s' cannot be "
                        "given the failure: %s", inv.step, run.run_id, handler, safe_text(err))
            return False
        recoveries = tuple((name, n) for name, n in inv.recoveries if name != handler) + ((handler, used + 1),)
        self.sup.scheduler.enqueue(run, handler, StepInput(packed, recoveries=recoveries))
        self.sup.scheduler.schedule()
        return True

    def _retry(self, run: RunState, key: int) -> None:
        retry = run.retries.pop(key, None)
        if retry is None:
            return
        run.active[retry.step] -= 1
        if run.status.accepts_work:
            self.sup.scheduler.enqueue(run, retry.step, retry.item, retry.retry)
            self.sup.scheduler.schedule()

    @staticmethod
    def drop_retries(run: RunState) -> list[PendingRetry]:
        """Cancel the run's pending retries and give them back (a graceful cancel keeps them)."""
        retries = list(run.retries.values())
        run.retries.clear()
        for retry in retries:
            retry.timer.cancel()
            run.active[retry.step] -= 1
        return retries

    # --- a worker died ---------------------------------------------------------------------------------
    def on_death(self, worker: Worker, expected: bool) -> None:
        sup = self.sup
        invs = ([worker.sync_inv] if worker.sync_inv else []) + [
            sup.invocations[i] for i in list(worker.async_invs) if i in sup.invocations]
        for inv in invs:
            sup.scheduler.release(inv)
            run = inv.run
            if not run.status.accepts_work:
                continue
            again = inv.again()
            if inv.visible:
                pass  # what it did is out: running it again would do it twice (see the docstring)
            elif expected:
                # Killed though it was not its run's doing, before anything it did was seen: running it
                # again elsewhere gives the outcome it would have had.
                sup.scheduler.enqueue(run, inv.step, again, inv.retry_state(), inv.crashes)
                continue
            elif len(invs) > 1 and inv.crashes == 0:
                # Several invocations shared the worker and any one of them may have crashed it: each is
                # run again once elsewhere; one that is on a crashed worker a second time is the culprit.
                sup.scheduler.enqueue(run, inv.step, again, inv.retry_state(), crashes=1)
                continue
            report.step_changed(run, inv, "failed")
            err = WorkerCrashedError(
                f"the worker process (pid {worker.pid}) running step '{inv.step}' of {run.wspec.name} run "
                f"{run.run_id} on {inv.event.type_name} died: {worker.describe_exit()}"
                + (f" (killed by procflow: {worker.kill_reason})" if worker.kill_reason else "")
                + ("; the step had already sent events or changed the run's state, so procflow does "
                   "not run it again" if inv.visible else ""),
                step=inv.step, pid=worker.pid, exitcode=worker.exitcode)
            if inv.visible and run.wspec.steps[inv.step].retry_policy is None:
                if not self.recover(inv, err, time.monotonic() - inv.first_try):
                    sup.fail(run, err, inv.step, inv.attempt, time.monotonic() - inv.first_try)
            else:
                # Nothing of it is out, or its author gave it a retry policy: a crash is then a failure
                # like a raise, and the policy decides (what it did stays done, as after a raise).
                self.retry_or_fail(inv, err)
        sup.scheduler.schedule()

    # --- stopping a run's work -------------------------------------------------------------------------
    def stop_invocations(self, run: RunState, hard: bool, why: str) -> None:
        """Stop a run's invocations: drop the unplaced, cancel async ones, kill ``def`` ones if ``hard``."""
        to_cancel: dict[Worker, list[int]] = {}
        for inv in list(run.invs.values()):
            if inv.worker is None:
                report.step_changed(run, inv, "cancelled")  # it never got a worker
                self.sup.scheduler.release(inv)
            elif inv.is_async:
                to_cancel.setdefault(inv.worker, []).append(inv.inv)
            elif hard:
                self.sup.pool.kill(inv.worker, f"{why}: stopping its step '{inv.step}'")
        for worker, invs in to_cancel.items():
            worker.send(CancelInvocations(tuple(invs)))
            self.sup.loop.call_later(self.sup.cancel_grace, self._cancel_overdue, worker, invs, why)

    def _cancel_overdue(self, worker: Worker, invs: list[int], why: str) -> None:
        stuck = [i for i in invs if i in worker.async_invs]
        if not stuck:
            return
        step = self.sup.invocations[stuck[0]].step if stuck[0] in self.sup.invocations else "?"
        self.sup.pool.retire(worker, f"{why}: async step '{step}' ignored cancellation for "
                                     f"{self.sup.cancel_grace:g} s (CPU-bound code in an async def?)",
                             self._holds_live_work)

    def _holds_live_work(self, worker: Worker) -> bool:
        for i in worker.async_invs:
            inv = self.sup.invocations.get(i)
            if inv is not None and inv.run.status in (RunStatus.RUNNING, RunStatus.CANCELLING):
                return True
        return worker.sync_inv is not None and not worker.sync_inv.run.status.ended
