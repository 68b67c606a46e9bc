"""TaskRunner: runs each generation as an owned asyncio task that writes its event log and status.

Lifecycle: ``start()`` opens the lease/reaper loop and the cancel listener; ``submit()`` creates a task
(idempotent by id) and starts its generation; ``drain()`` refuses new work, gives running generations
``grace`` seconds, then ends the rest with ``error{interrupted}`` so no subscriber waits forever;
``shutdown()`` drains (if nothing did yet), waits for that, and stops the loops.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec

from .aio import cancel_and_wait
from .errors import CancelReason, Conflict, GatewayError, NotFound, StoreUnavailable
from .events import Complete, Error, Event, Start, TaskInfo, Terminal, Text
from .logs import TASK_ID
from .metrics import GenerationClock
from .providers import GenerationRequest, Provider
from .store import UNAVAILABLE, EventLog, TaskEnded, quiet_level
from .tenants import ANONYMOUS, TenantLimits, public, scoped

log = logging.getLogger(__name__)

ProviderResolver = Callable[[str], tuple[Provider, str]]
TextSink = Callable[[str], Awaitable[None]]
EndHook = Callable[[], Awaitable[object]]
T = TypeVar("T")

ATTEMPT_SECONDS = 10.0  # one try of a store call, at most
LAST_TRY_SECONDS = 1.0  # past the grace: one short try, so the log still ends properly if the store is back
RETRY_MAX_SECONDS = 1.0


def fingerprint(request: GenerationRequest) -> str:
    """Equal requests (once parsed, whatever their key order) have equal fingerprints."""
    return hashlib.sha256(msgspec.json.encode(request, order="sorted")).hexdigest()


def new_task_id() -> str:
    return str(uuid.uuid4())


class LogWriter:
    """Appends a generation's events behind it, so reading upstream never waits on the store.

    Events that arrive while an append is in flight go out together in the next one: one round trip per batch,
    not per delta; an in-process store takes each event inline, as it comes. An append the store fails is
    tried again, the same events in the same order, until the store has failed for ``grace`` seconds in a row
    (STORE_OUTAGE_GRACE): an outage within the grace loses nothing. Each append carries its offset, so an
    attempt whose answer was lost but which the store did write is not written twice. At ``limit`` pending
    events the generation waits (bounded memory). Once the writer gave up (StoreUnavailable) or the task ended
    elsewhere (TaskEnded), nothing more is written (the log would have a gap) and ``write`` raises at once.
    """

    def __init__(self, store: EventLog, task_id: str, owner: str, *, grace: float = 30.0, limit: int = 1024) -> None:
        self.store = store
        self.task_id = task_id
        self.owner = owner
        self.grace = grace
        self.limit = limit
        self._pending: list[Event] = []  # in order, until stored
        self._stored = 0
        self._flushing: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._failing_since: float | None = None

    async def write(self, event: Event) -> None:
        if self._failure is not None:
            raise self._failure
        if self.store.in_process:
            try:
                await self.store.append(self.task_id, (event,), owner=self.owner, offset=self._stored)
            except Exception as exc:
                self._failure = exc
                raise
            self._stored += 1
            return
        self._pending.append(event)
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name=f"append-{self.task_id}")
        elif len(self._pending) >= self.limit:
            await asyncio.wait({self._flushing})
            if self._failure is not None:
                raise self._failure

    async def drain(self) -> None:
        """Wait until every written event is stored; raise if an append failed."""
        if self._flushing is not None:
            await asyncio.wait({self._flushing})
        if self._failure is not None:
            raise self._failure

    async def persist(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, tried again while the store fails it, until the store has failed this writer for the
        grace: then StoreUnavailable. Each try is bounded by what is left of the grace; past it, one short try."""
        delay = 0.05
        while True:
            started = time.monotonic()
            left = (self._failing_since or started) + self.grace - started
            try:
                async with asyncio.timeout(min(ATTEMPT_SECONDS, max(left, LAST_TRY_SECONDS))):
                    result = await call()
            except (StoreUnavailable, TimeoutError) as exc:
                self._failing_since = self._failing_since or started
                left = self._failing_since + self.grace - time.monotonic()
                if left <= 0:
                    if isinstance(exc, StoreUnavailable):
                        raise
                    raise StoreUnavailable("TimeoutError") from exc
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, RETRY_MAX_SECONDS)
            else:
                self._failing_since = None
                return result

    def forgive(self) -> None:
        """Give the store a new grace from now (the writer gave up; its task's log can still be ended)."""
        self._failing_since = None

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:]
                await self.persist(functools.partial(self._append, batch))
                del self._pending[: len(batch)]
                self._stored += len(batch)
        except Exception as exc:
            self._failure = exc
            self._pending.clear()
        finally:
            self._flushing = None

    async def _append(self, batch: list[Event]) -> str:
        return await self.store.append(self.task_id, batch, owner=self.owner, offset=self._stored)


class TaskRunner:
    def __init__(
        self,
        store: EventLog,
        resolve: ProviderResolver,
        *,
        max_concurrent: int = 256,
        lease_seconds: float = 5.0,
        grace_seconds: float = 10.0,
        store_grace: float = 30.0,
        replica_id: str | None = None,
        limits: TenantLimits | None = None,
    ) -> None:
        self.store = store
        self.resolve = resolve
        self.limits = limits
        self.max_concurrent = max_concurrent
        self.lease_seconds = lease_seconds
        self.grace_seconds = grace_seconds
        self.store_grace = store_grace
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancel_reasons: dict[str, CancelReason] = {}
        self._finishing: set[str] = set()
        self._reserved = 0
        self._accepting = False
        self._loops: list[asyncio.Task[None]] = []
        self._draining: asyncio.Task[None] | None = None

    @property
    def running_count(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        self._accepting = True
        self._loops = [
            asyncio.create_task(self._supervise(self._lease_loop), name="lease-loop"),
            asyncio.create_task(self._supervise(self._cancel_loop), name="cancel-listener"),
        ]

    async def submit(
        self,
        task_id: str | None,
        request: GenerationRequest,
        *,
        tenant: str = ANONYMOUS,
        thread_id: str = "",
        message_id: str = "",
        on_end: EndHook | None = None,
    ) -> tuple[TaskInfo, bool]:
        """Create and start a task of ``tenant`` (``task_id``: the client's, else a new one); an existing id with
        an equal request returns that task (False). The TaskInfo's id is the scoped one (``tenants.scoped``).
        ``on_end`` runs on this replica once the generation has ended and its terminal event is stored."""
        if not self._accepting:
            raise GatewayError("unavailable", "this replica is shutting down", retry_after=1)
        provider, upstream_model = self.resolve(request.model)
        if len(self._running) + self._reserved >= self.max_concurrent:
            raise GatewayError("unavailable", "too many generations running on this replica", retry_after=1)
        task_id = scoped(tenant, task_id or new_task_id())
        start = Start(public(task_id), request.model, thread_id, message_id)
        self._reserved += 1
        try:
            info, created = await self._create(task_id, request, start)
        finally:
            self._reserved -= 1
        if not created:
            if info.fingerprint != fingerprint(request):
                raise Conflict(f"task {public(task_id)} exists with a different request")
            return info, False
        upstream = msgspec.structs.replace(request, model=upstream_model)
        generation = self._generate(task_id, request.model, provider, upstream, on_end)
        task = asyncio.create_task(generation, name=f"task-{task_id}")
        self._running[task_id] = task
        task.add_done_callback(lambda _: self._running.pop(task_id, None))
        return info, True

    async def _create(self, task_id: str, request: GenerationRequest, start: Start) -> tuple[TaskInfo, bool]:
        """The task, created running here with ``start`` its first event unless it exists; a new one takes one
        of its tenant's slots (429 if none is free)."""
        create = functools.partial(
            self.store.create_task,
            task_id,
            fingerprint=fingerprint(request),
            model=request.model,
            lease_seconds=self.lease_seconds,
            owner=self.replica_id,
            first=start,
        )
        if self.limits is None or not self.limits.limits_concurrency:
            return await create()
        existing = await self.store.get_task(task_id)
        if existing is not None:
            return existing, False
        await self.limits.claim(task_id)
        info, created = await create()
        if not created:
            await self.limits.release(task_id)
        return info, created

    async def cancel(self, task_id: str) -> TaskInfo:
        info = await self.store.get_task(task_id)
        if info is None:
            raise NotFound(f"no task {public(task_id)}")
        if info.finished:
            raise Conflict(f"task {public(task_id)} already finished ({info.status})")
        if not self._cancel_local(task_id, "cancelled"):
            await self.store.request_cancel(task_id)
        return info

    async def wait(self, task_id: str, on_text: TextSink | None = None) -> Terminal:
        """The task's terminal event, once it arrives (the lease guarantees it does); text goes to ``on_text``."""
        async for batch in self.store.follow(task_id, heartbeat=self.lease_seconds):
            for _, event in batch:
                if isinstance(event, Complete | Error):
                    return event
                if on_text is not None and isinstance(event, Text) and event.text:
                    await on_text(event.text)
        raise NotFound(f"no task {public(task_id)}")

    async def answer(self, task_id: str, on_text: TextSink | None = None) -> Complete:
        """The task's complete answer, once it ends; its error as a GatewayError if it fails."""
        terminal = await self.wait(task_id, on_text)
        if isinstance(terminal, Error):
            raise failure(terminal)
        return terminal

    def drain(self) -> asyncio.Task[None]:
        """Refuse new work from now on; the grace of running generations starts now (once, however often
        this is called). The task returned ends when every generation has ended."""
        if self._draining is None:
            self._accepting = False
            self._draining = asyncio.create_task(self._wind_down(), name="wind-down")
        return self._draining

    async def shutdown(self) -> None:
        await self.drain()
        await cancel_and_wait(*self._loops)
        self._loops.clear()

    async def _wind_down(self) -> None:
        pending = set(self._running.values())
        if pending:
            log.info("waiting up to %.1fs for %d running generations", self.grace_seconds, len(pending))
            await asyncio.wait(pending, timeout=self.grace_seconds)
        for task_id in list(self._running):
            self._cancel_local(task_id, "interrupted")
        if self._running:
            await asyncio.wait(set(self._running.values()), timeout=5.0)

    def _cancel_local(self, task_id: str, reason: CancelReason) -> bool:
        task = self._running.get(task_id)
        if task is None:
            return False
        if task_id not in self._finishing:
            self._cancel_reasons.setdefault(task_id, reason)
            task.cancel()
        return True

    async def _generate(
        self, task_id: str, model: str, provider: Provider, request: GenerationRequest, on_end: EndHook | None
    ) -> None:
        TASK_ID.set(public(task_id))  # this generation's own context: its log lines name it
        writer = LogWriter(self.store, task_id, self.replica_id, grace=self.store_grace)
        clock = GenerationClock()
        terminal: Terminal | None
        try:
            terminal = await self._run_upstream(model, provider, request, writer, clock)
        except GatewayError as exc:
            terminal = Error(exc.type, exc.message, exc.retryable, exc.retry_after)
        except asyncio.CancelledError:
            _uncancel()
            reason: CancelReason = self._cancel_reasons.get(task_id, "interrupted")
            message = "cancelled by request" if reason == "cancelled" else "the replica shut down before it finished"
            terminal = Error(reason, message, reason == "interrupted")
        except Exception:
            log.exception("generation %s failed", task_id)
            terminal = Error("internal", "internal error while generating")
        # From here on the task only writes its terminal event: a second cancel must not stop that.
        self._finishing.add(task_id)
        self._cancel_reasons.pop(task_id, None)
        try:
            try:
                await self._finish(writer, terminal)
            finally:
                await self._release(task_id)
            if on_end is not None:  # after the release: the tenant's slot is free for what the hook waits on
                await self._run_hook(task_id, on_end)
        finally:
            clock.ended(terminal)
            self._finishing.discard(task_id)

    async def _run_hook(self, task_id: str, on_end: EndHook) -> None:
        try:
            await on_end()
        except Exception:
            log.exception("the end hook of task %s failed", task_id)

    async def _run_upstream(
        self, model: str, provider: Provider, request: GenerationRequest, writer: LogWriter, clock: GenerationClock
    ) -> Terminal | None:
        """Stream the answer into the log (its first event is in it since ``_create``); the terminal event to
        write, or None if the task ended elsewhere. ``model``: the one asked for, which the answer names."""
        try:
            async for event in provider.stream(request):
                if isinstance(event, Complete):
                    return msgspec.structs.replace(event, model=model)
                if isinstance(event, Text):
                    clock.text()
                await writer.write(event)
        except TaskEnded:
            return None  # the writer says so again when drained
        return Error("upstream_error", "upstream ended without completing the message")

    async def _ended_elsewhere(self, task_id: str) -> Terminal | None:
        """The store refused our events: another replica ended the task (its log has its terminal event), or the
        store lost it (came back empty): then nobody else can end it, and it ends ``unavailable`` here."""
        try:
            lost = await self.store.get_task(task_id) is None
        except (StoreUnavailable, TimeoutError):
            lost = True
        if lost:
            log.debug("task %s is gone from the store; ended unavailable", task_id)
            return UNAVAILABLE
        log.warning("task %s was ended elsewhere (its lease lapsed); generation stopped", task_id)
        return None

    async def _finish(self, writer: LogWriter, terminal: Terminal | None) -> None:
        """Write the terminal event after every event before it, shielded from further cancellation."""
        finishing = asyncio.ensure_future(self._write_terminal(writer, terminal))
        while not finishing.done():
            try:
                await asyncio.shield(finishing)
            except asyncio.CancelledError:
                _uncancel()

    async def _write_terminal(self, writer: LogWriter, terminal: Terminal | None) -> None:
        task_id = writer.task_id
        try:
            await writer.drain()
        except TaskEnded:
            terminal = await self._ended_elsewhere(task_id)
        except Exception as exc:  # events were lost: the log must still end, with an error
            log.log(quiet_level(exc), "could not store events of task %s: %s", task_id, type(exc).__name__)
            terminal = UNAVAILABLE
        if terminal is None or await self._end_log(writer, terminal):
            return  # ended elsewhere, or its log has its terminal event
        # The store has no terminal event for it: this replica's own subscribers get one all the same, now; the
        # log gets the real one if the store answers within another grace (a client that tries again reads it),
        # else the lease lapses and a reaper ends it.
        self.store.abandon(task_id, UNAVAILABLE)
        writer.forgive()
        await self._end_log(writer, terminal)

    async def _end_log(self, writer: LogWriter, terminal: Terminal) -> bool:
        """Write the terminal event; whether the log has one now (ours, or another replica's)."""
        try:
            if await writer.persist(functools.partial(self.store.finish, writer.task_id, terminal)):
                return True
            return await self._ended_elsewhere(writer.task_id) is None
        except Exception as exc:
            log.log(quiet_level(exc), "could not finish task %s: %s", writer.task_id, type(exc).__name__)
            return False

    async def _release(self, task_id: str) -> None:
        try:
            async with asyncio.timeout(10):
                await self.store.release(task_id)
                if self.limits is not None:
                    await self.limits.release(task_id)
        except Exception as exc:
            log.log(quiet_level(exc), "could not release task %s: %s", task_id, type(exc).__name__)

    async def _supervise(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Keep a background loop alive through store outages (a loop that returns is done)."""
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.log(quiet_level(exc), "%s failed (%s: %s); restarting", loop.__name__, type(exc).__name__, exc)
                await asyncio.sleep(min(1.0, self.lease_seconds / 3))

    async def _lease_loop(self) -> None:
        period = self.lease_seconds / 3
        # Leases lapse while the store does not answer, though the replicas holding them live on; this loop is
        # restarted when the store fails it, so after a restart every replica gets one lease to renew first.
        reap_from = time.monotonic() + self.lease_seconds
        while True:
            async with asyncio.timeout(period):
                cancelled = await self.store.renew_leases(
                    list(self._running), owner=self.replica_id, lease_seconds=self.lease_seconds
                )
            for task_id in cancelled:
                self._cancel_local(task_id, "cancelled")
            if self.limits is not None:
                generating = [task_id for task_id in self._running if task_id not in self._finishing]
                async with asyncio.timeout(period):
                    await self.limits.renew(generating)  # an ended one's slot is freed, and stays free
            if time.monotonic() >= reap_from:
                async with asyncio.timeout(period):
                    for task_id in await self.store.interrupt_lapsed():
                        log.warning("task %s lost its replica; ended as interrupted", task_id)
            await asyncio.sleep(period)

    async def _cancel_loop(self) -> None:
        async for task_id in self.store.cancel_requests():
            self._cancel_local(task_id, "cancelled")


def failure(error: Error) -> GatewayError:
    """A task's error event as the error its waiting client gets."""
    retry_after = error.retry_after or (1.0 if error.type in ("interrupted", "unavailable") else None)
    return GatewayError(error.type, error.message, retry_after=retry_after)


def _uncancel() -> None:
    """We handled this cancellation ourselves; later timeouts in this task must not mistake it for theirs."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
