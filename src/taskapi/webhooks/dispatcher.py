"""The webhook dispatcher: turns new events into deliveries and sends due deliveries, many at a
time, each webhook within its own share. Runs beside the job worker (in the API process with
`WORKER_EMBEDDED`, or in `taskapi worker`); any number of them can share the work.

Durability comes from the database, not from this process: a delivery is a row before anything
is sent, it is leased while in flight, and its outcome is written after the attempt. A worker
killed mid-delivery leaves a lease that runs out; another worker (or this one, restarted) sends
the delivery again, with the same `webhook-id`, so the receiver can drop the duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskapi.jobs.queue import utcnow
from taskapi.kit import metrics
from taskapi.kit.config import Settings
from taskapi.kit.outbound import OutboundResult, check_url, outbound_client, post_bounded
from taskapi.webhooks import queue, signing
from taskapi.webhooks.queue import Outgoing

logger = logging.getLogger("taskapi.webhooks")

Clock = Callable[[], datetime]
# The receiver's answer is read up to this many bytes (a receiver has no business sending more;
# what it sends beyond is never read).
MAX_RESPONSE_BYTES = 4096

_DELIVERED = metrics.WEBHOOK_ATTEMPTS.labels("delivered")
_RETRY = metrics.WEBHOOK_ATTEMPTS.labels("retry")
_FAILED = metrics.WEBHOOK_ATTEMPTS.labels("failed")


class WebhookDispatcher:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        wake: Callable[[], asyncio.Event] | None = None,
        clock: Clock = utcnow,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """`wake()` returns an event set when the event log may have grown (the process's
        EventWaker); without it the dispatcher polls. `clock` and `client` are for tests."""
        self._sessionmaker = sessionmaker
        self._settings = settings
        self._wake = wake
        self._clock = clock
        self._client = client
        self._in_flight: set[asyncio.Task[None]] = set()
        self._busy: Counter[int] = Counter()
        self._freed = asyncio.Event()
        # Outcomes waiting for the writer, and the writer while it runs (see _record).
        self._outcomes: list[tuple[Outgoing, OutboundResult, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.delivered = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set; deliveries in flight are finished (or time out) first."""
        async with contextlib.AsyncExitStack() as stack:
            client = self._client
            if client is None:
                client = await stack.enter_async_context(
                    outbound_client(
                        allow_private_networks=self._settings.webhook_allow_private_networks,
                        timeout=self._settings.webhook_timeout_seconds,
                        max_connections=self._settings.webhook_max_in_flight,
                    )
                )
            try:
                await self._loop(client, stop)
            finally:
                if self._in_flight:
                    await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _loop(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        poll = self._settings.job_poll_interval_seconds
        # A round fans out only when the log may have grown: at the start, when woken, when
        # another process held the cursor (it may have read its horizon before our events were
        # visible), and at least once per poll interval (a lost wake-up; no waker: every
        # round). Deliveries finishing wake the loop far more often (once each, under load):
        # those rounds only claim, instead of taking the cursor's row lock in a transaction of
        # their own hundreds of times a second for nothing.
        pending, fanned_out_at = True, -poll
        while not stop.is_set():
            # Taken before reading, waited on after: a change landing meanwhile is not missed.
            grown = self._wake() if self._wake is not None else None
            self._freed.clear()
            try:
                if pending or grown is None or time.monotonic() - fanned_out_at >= poll:
                    fanned_out_at = time.monotonic()
                    _, caught_up = await self._fan_out_all()
                    pending = not caught_up
                started = await self.start_due(client)
            except Exception:
                # The database is down or restarting: wait and try again, never die.
                logger.exception("webhook dispatcher loop error")
                pending, started = True, 0
            if not started:
                waits = [stop.wait(), self._freed.wait()]
                if grown is not None:
                    waits.append(grown.wait())
                tasks = [asyncio.ensure_future(wait) for wait in waits]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait(tasks, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    task.cancel()
            pending = pending or (grown is not None and grown.is_set())

    async def run_once(self, client: httpx.AsyncClient) -> int:
        """One round, finished: fan out, send what is due, wait for it (tests, the CLI)."""
        await self.fan_out()
        started = await self.start_due(client)
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        return started

    async def fan_out(self) -> int:
        """New events into deliveries, batch after batch until caught up; how many made."""
        made, _ = await self._fan_out_all()
        return made

    async def _fan_out_all(self) -> tuple[int, bool]:
        """(deliveries made, whether this process caught up: False if another one held the
        cursor)."""
        made = 0
        while True:
            async with self._sessionmaker() as session:
                result = await queue.fan_out(session, self._clock())
                await session.commit()
            if result is None:
                return made, False
            events, deliveries = result
            made += deliveries
            if events < queue.FAN_OUT_BATCH:
                return made, True

    async def start_due(self, client: httpx.AsyncClient) -> int:
        """Claim due deliveries up to the free capacity and start sending them."""
        # Requests in flight are capped; so are deliveries whose outcome is still being
        # written (their leases must not run out while they wait for the writer).
        cap = self._settings.webhook_max_in_flight
        free = min(cap - sum(self._busy.values()), 2 * cap - len(self._in_flight))
        if free <= 0:
            return 0
        async with self._sessionmaker() as session:
            claimed = await queue.claim(
                session, self._settings, self._clock(), free, dict(self._busy)
            )
            await session.commit()
        for outgoing in claimed:
            self._busy[outgoing.webhook_id] += 1
            task = asyncio.create_task(self._deliver(client, outgoing))
            self._in_flight.add(task)
            task.add_done_callback(self._done)
        return len(claimed)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._freed.set()

    async def _deliver(self, client: httpx.AsyncClient, outgoing: Outgoing) -> None:
        try:
            try:
                result = await self.attempt(client, outgoing)
            finally:
                # The receiver has answered: its share is free for the next request while the
                # outcome is written. The delivery stays pending (and leased) until then, so
                # the next one about the same task still waits for it.
                self._busy[outgoing.webhook_id] -= 1
                if self._busy[outgoing.webhook_id] <= 0:
                    del self._busy[outgoing.webhook_id]
                self._freed.set()
            await self._record(outgoing, result)
        except Exception:
            # The outcome could not be written (database away): the lease runs out and the
            # delivery is sent again, which `webhook-id` makes harmless to the receiver.
            logger.exception("webhook delivery %s: outcome not recorded", outgoing.delivery_id)

    async def attempt(self, client: httpx.AsyncClient, outgoing: Outgoing) -> OutboundResult:
        # The URL was checked when saved, perhaps under other settings (http allowed in
        # development): the rules of this process apply to what it sends.
        refused = check_url(
            outgoing.url,
            require_https=self._settings.environment not in ("development", "test"),
            allow_private=self._settings.webhook_allow_private_networks,
        )
        if refused is not None:
            return OutboundResult(status=None, body=b"", duration_ms=0, error=f"refused: {refused}")
        # The receiver checks the timestamp against its own clock: always the real time (the
        # dispatcher's clock schedules; tests move it).
        sent_at = utcnow()
        headers = {
            "content-type": "application/json",
            "webhook-id": outgoing.message_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signing.signature_header(
                outgoing.secrets, outgoing.message_id, sent_at, outgoing.body
            ),
        }
        result = await post_bounded(
            client,
            outgoing.url,
            content=outgoing.body,
            headers=headers,
            max_body_bytes=MAX_RESPONSE_BYTES,
        )
        metrics.WEBHOOK_ATTEMPT_DURATION.observe(result.duration_ms / 1000)
        return result

    async def _record(self, outgoing: Outgoing, result: OutboundResult) -> None:
        """Write the attempt's outcome; returns once it is committed.

        Outcomes are written by one writer at a time, each write taking every outcome that
        arrived while the previous one was committing (group commit): one connection, one
        commit and one update of each webhook's row per batch. Written one per delivery, the
        deliveries to one webhook queued on its row's lock for a commit each, and a burst of
        answers took pooled connections from the API."""
        written = asyncio.get_running_loop().create_future()
        self._outcomes.append((outgoing, result, written))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_outcomes())
        await written

    async def _write_outcomes(self) -> None:
        try:
            while self._outcomes:
                batch, self._outcomes = self._outcomes, []
                failure: Exception | None = None
                try:
                    await self._write(batch)
                except Exception as error:
                    failure = error  # each delivery of the batch reports it (_deliver)
                for _, _, written in batch:
                    if written.done():
                        continue
                    if failure is None:
                        written.set_result(None)
                    else:
                        written.set_exception(failure)
        finally:
            # No await since the loop found nothing left: an outcome arriving from now on
            # starts a writer of its own.
            self._writer = None

    async def _write(
        self, batch: list[tuple[Outgoing, OutboundResult, asyncio.Future[None]]]
    ) -> None:
        succeeded: list[tuple[Outgoing, int, int]] = []
        failed: list[tuple[Outgoing, OutboundResult]] = []
        for outgoing, result, _ in batch:
            if result.error is None and result.status is not None and 200 <= result.status < 300:
                succeeded.append((outgoing, result.status, result.duration_ms))
            else:
                failed.append((outgoing, result))
        retried: list[bool] = []
        async with self._sessionmaker() as session:
            now = self._clock()
            if succeeded:
                await queue.record_successes(session, succeeded, now)
            for outgoing, result in failed:
                retried.append(
                    await queue.record_failure(
                        session,
                        outgoing,
                        status=result.status,
                        duration_ms=result.duration_ms,
                        error=result.error or f"HTTP {result.status}",
                        now=now,
                    )
                )
            await session.commit()
        self.delivered += len(succeeded)
        _DELIVERED.inc(len(succeeded))
        for outgoing, _, _ in succeeded:
            if outgoing.attempts == 1:
                lag = (now - outgoing.occurred_at).total_seconds()
                metrics.WEBHOOK_DELIVERY_LAG.observe(max(0.0, lag))
        _RETRY.inc(sum(retried))
        _FAILED.inc(len(retried) - sum(retried))
