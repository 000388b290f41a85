"""The outbox dispatcher: every proactive message (notifications, reminders, broadcasts, and
conversation replies whose direct send failed) leaves through here, paced under the platform's
limit, and survives a crash without loss.

How it works
- One loop per channel that has a sender in this process (rows of other channels are never
  touched). It claims due rows (`storage.outbox.claim`: leases, FOR UPDATE SKIP LOCKED on
  PostgreSQL) and, in the same short transaction, reserves one send slot per row from the
  channel's shared pace (bot/pacing.py: the limits each sender declares, GCRA shared by every
  worker, per-chat buckets, the guard on send starts).
- A send more than a quarter interval late for its slot (LATE_TOLERANCE) goes back to pending
  for a fresh slot; a chat's messages go out in order (a row waits for the chat's earlier one).
- A sliding window of at most OUTBOX_BATCH_SIZE rows per channel is claimed and not yet confirmed:
  those are the only messages a crash can send twice. Outcomes are written in small groups
  (a few per transaction) as sends finish (bot/outcomes.py: what each SendFailure does to its
  row); a restarted or other dispatcher takes over expired leases.
- The clock can move: waits are measured on the monotonic clock, stored pace and pauses are
  clamped when read (bot/pacing.py), a pending row created after now (queued before the step) is
  due now, and the scheduler brings back jobs planned further ahead than their interval
  (bot/scheduler.py).
- Workers record themselves and beat every few seconds (bot/workers.py); SQLite allows one
  dispatcher, a second one says so and does not dispatch (`katilim run` takes over once the
  first one is gone).

Runs inside `katilim run` as the scheduler job "outbox" and alone in `katilim worker` (bot/cli_worker.py).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.engine import Engine as DbEngine

from bot.flood import LOCAL_CHANNELS
from bot.outcomes import Delivery, Outcome, Row, record
from bot.pacing import LATE_TOLERANCE, PacedSender, Pacing, send_paced, unpaced
from bot.scheduler import Job
from bot.workers import HEARTBEAT_INTERVAL, SQLITE_SINGLE, Heartbeat
from conversations.messages import Outbound
from handlers.delivery import Sender, SendError, SendFailure
from storage import outbox
from storage.db import transaction, utcnow

log = logging.getLogger(__name__)

SETTLE_AFTER = 0.2                        # a finished send waits at most this long to be recorded
STOP_GRACE = 10.0                         # a stopping dispatcher waits this long for sends on the wire
WARM_UP_TIMEOUT = 15.0                    # seconds a sender has to open its connections at start


@dataclass
class _Claimed:
    rows: list[Row] = field(default_factory=list)
    times: list[float] = field(default_factory=list)   # monotonic send times
    full: bool = False                                 # as many due rows as asked for: more may wait
    paused_for: float = 0.0


class Dispatcher:
    """Delivers the outbox through `senders` (channel → Sender). `start()` returns False (and logs
    why) when it may not dispatch: another live dispatcher on the same SQLite database."""

    def __init__(self, app_or_db, senders: dict[str, Sender], worker_id: str, settings=None, *,
                 role: str = "run", retry_when_refused: bool = False) -> None:
        if isinstance(app_or_db, DbEngine):
            if settings is None:
                raise TypeError("Dispatcher(db, ...) needs settings")
            self.db = app_or_db
        else:
            self.db = app_or_db.db
            settings = settings or app_or_db.settings
        self.settings = settings
        self.worker_id = worker_id
        self.retry_when_refused = retry_when_refused
        self.runners: dict[str, _ChannelRunner] = {}
        for channel, sender in senders.items():
            # the direct replies' pacing, when there is one: the guard and the chat buckets are shared
            pacing = sender.pacing if isinstance(sender, PacedSender) else Pacing.of(sender, settings)
            self.runners[channel] = _ChannelRunner(self, channel, unpaced(sender), pacing)
        self.heartbeat = Heartbeat(self.db, worker_id, role, self.runners)
        self.started = False
        self.dispatching = False
        self.refused = ""
        self.stopping = False
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task] = {}
        self._beating: asyncio.Task | None = None  # the heartbeat loop

    # -- lifecycle
    async def start(self) -> bool:
        """Record this worker and start dispatching; False when refused (SQLite, another dispatcher)."""
        if self.started:
            return self.dispatching
        self.started = True
        rivals = await asyncio.to_thread(self.heartbeat.register)
        if rivals:
            self.refused = SQLITE_SINGLE.format(others=", ".join(rivals))
            log.error(self.refused)
        else:
            await self._warm_up()
            self._start_runners()
        self._beating = asyncio.create_task(self._heartbeat_loop(), name=f"outbox-heartbeat-{self.worker_id}")
        return self.dispatching

    async def stop(self) -> None:
        """Stop claiming, let sends already on the wire finish (up to STOP_GRACE), record every
        outcome, give back what this worker still holds and remove its heartbeat."""
        if not self.started or self.stopping:
            return
        self.stopping = True
        self._stop.set()
        for runner in self.runners.values():
            runner.wake.set()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._beating is not None:
            self._beating.cancel()
            await asyncio.gather(self._beating, return_exceptions=True)
        try:
            released = await asyncio.to_thread(self.heartbeat.unregister)
            if released:
                log.info("outbox: gave back %d claimed rows at stop", released)
        except Exception:
            log.exception("outbox: could not give back claimed rows at stop (their leases will run out)")
        if self.dispatching:
            log.info("outbox dispatcher %s stopped", self.worker_id)

    async def wait(self) -> None:
        await self._stop.wait()

    async def _warm_up(self) -> None:
        """Open the senders' connections before the first slot (a Telegram Bot initialises on its
        first call: done during a send, it would make that send late for its slot)."""
        for runner in self.runners.values():
            try:
                await asyncio.wait_for(runner.sender.warm_up(), WARM_UP_TIMEOUT)
            except Exception as exc:  # noqa: BLE001  (the first send will try again and apply the rules)
                log.warning("outbox %s: sender not initialised ahead: %s", runner.channel, exc)

    def _start_runners(self) -> None:
        self.dispatching = True
        for channel, runner in self.runners.items():
            self._tasks[channel] = asyncio.create_task(runner.run(), name=f"outbox-{channel}")
        log.info("outbox dispatcher %s running for %s", self.worker_id, ", ".join(self.runners) or "no channel")

    async def _heartbeat_loop(self) -> None:
        while not self.stopping:
            try:
                await asyncio.wait_for(self._stop.wait(), HEARTBEAT_INTERVAL)
                return
            except asyncio.TimeoutError:
                pass
            try:
                if not self.dispatching and self.retry_when_refused:
                    if not await asyncio.to_thread(self.heartbeat.register):
                        log.info("outbox: the other dispatcher is gone; this process dispatches now")
                        self.refused = ""
                        await self._warm_up()
                        self._start_runners()
                    continue
                await asyncio.to_thread(self.heartbeat.beat, self.dispatching)
                for channel, task in list(self._tasks.items()):
                    if task.done() and not task.cancelled() and not self.stopping:  # a bug: log, start again
                        log.error("outbox loop for %s ended: %r; restarting it", channel, task.exception())
                        self._tasks[channel] = asyncio.create_task(self.runners[channel].run())
                for runner in self.runners.values():
                    runner.report()
            except Exception:
                log.exception("outbox heartbeat failed")


# A chat's later row waits while its earlier one went back to pending or waits for a retry.
WAITING = (Delivery.DEFERRED, SendFailure.RATE_LIMITED, SendFailure.RETRYABLE)


class _ChannelRunner:
    """The loop of one channel in one worker."""

    def __init__(self, dispatcher: Dispatcher, channel: str, sender: Sender, pacing: Pacing) -> None:
        self.d = dispatcher
        self.channel = channel
        self.sender = sender
        self.pacing = pacing
        self.interval = 1.0 / pacing.rate if pacing.rate else 0.0
        self.unconfirmed = 0                      # claimed rows not yet recorded
        self.outcomes: list[Outcome] = []
        self.tasks: set[asyncio.Task] = set()
        self.last_by_address: dict[str, asyncio.Task] = {}
        self.blocked: dict[str, tuple[float, str]] = {}  # address → (when, reason), found in this process
        self.paused_until = 0.0                   # monotonic
        self.wake = asyncio.Event()
        self.counts: dict[str, int] = {}

    # -- the loop
    async def run(self) -> None:
        d = self.d
        batch = d.settings.outbox_batch_size
        poll = d.settings.outbox_poll_interval
        while not d.stopping:
            self.wake.clear()
            wait = poll
            try:
                await self._settle(force=False)
                paused = self.paused_until - time.monotonic()
                room = batch - self.unconfirmed
                if paused > 0:
                    wait = paused
                elif room >= max(1, (batch + 1) // 2):
                    claimed = await asyncio.to_thread(self._claim, room)
                    if claimed.paused_for > 0:
                        self._pause_locally(claimed.paused_for)
                    self._schedule(claimed)
                    if claimed.full and claimed.paused_for <= 0:
                        continue
                elif self.tasks:
                    wait = SETTLE_AFTER
            except Exception:
                log.exception("outbox %s: round failed", self.channel)
                wait = max(poll, 1.0)
            try:
                await asyncio.wait_for(self.wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
        await self._drain()

    async def _drain(self) -> None:
        if self.tasks:
            done, pending = await asyncio.wait(set(self.tasks), timeout=STOP_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        for _attempt in range(3):
            try:
                await self._settle(force=True)
                return
            except Exception:
                log.exception("outbox %s: could not record outcomes at stop", self.channel)
                await asyncio.sleep(0.5)

    def _pause_locally(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    # -- claiming (in a worker thread)
    def _claim(self, room: int) -> _Claimed:
        d = self.d
        rate = self.pacing.rate
        result = _Claimed()
        with transaction(d.db) as db:
            if rate:
                result.paused_for = outbox.channel_paused_for(db, self.channel)
                if result.paused_for > 0:
                    return result
            claimed = outbox.claim(db, d.worker_id, self.channel, room, d.settings.outbox_lease)
            if not claimed:
                return result
            result.full = len(claimed) == room
            rows = [Row(r.id, r.address, r.kind, dict(r.payload or {}), r.attempts) for r in claimed]
            too_many = [r.id for r in rows if r.attempts > d.settings.outbox_max_attempts]
            if too_many:  # claimed again and again: its worker kept dying while sending it
                outbox.finish(db, too_many, "failed", f"gave up after {d.settings.outbox_max_attempts} attempts "
                                                      "(the worker stopped while sending)", worker_id=d.worker_id)
            rows = [r for r in rows if r.id not in set(too_many)]
            gone = outbox.unreachable_addresses(db, self.channel, [r.address for r in rows])
            gone |= self._blocked_now()
            if gone:
                outbox.finish(db, [r.id for r in rows if r.address in gone], "unsendable",
                              "blocked: the resident cannot be reached on this channel", worker_id=d.worker_id)
                rows = [r for r in rows if r.address not in gone]
            if self.pacing.chats is not None:
                ready = []
                now = utcnow()
                for r in rows:
                    wait = self.pacing.chats.take(r.address)
                    if wait > 0:
                        outbox.defer(db, [r.id], until=now + timedelta(seconds=wait), worker_id=d.worker_id)
                    else:
                        ready.append(r)
                rows = ready
            if rows and rate:
                slots = outbox.reserve_slots(db, self.channel, len(rows), rate, horizon=self.pacing.horizon)
                base = time.monotonic()
                if slots.paused_for > 0:
                    outbox.defer(db, [r.id for r in rows], worker_id=d.worker_id)
                    result.paused_for = slots.paused_for
                    return result
                result.times = [base + slots.at(i) for i in range(len(rows))]
            else:
                result.times = [0.0] * len(rows)
            result.rows = rows
        return result

    def _is_blocked(self, address: str) -> bool:
        """A 403 from this chat in this process lately (older ones: the database decides)."""
        entry = self.blocked.get(address)
        if entry is None:
            return False
        if time.monotonic() - entry[0] > self.d.settings.outbox_lease.total_seconds():
            self.blocked.pop(address, None)
            return False
        return True

    def _blocked_now(self) -> set[str]:
        """The same, read from the claim's thread (a snapshot, nothing changed)."""
        horizon = time.monotonic() - self.d.settings.outbox_lease.total_seconds()
        return {a for a, (when, _) in list(self.blocked.items()) if when >= horizon}

    # -- sending
    def _schedule(self, claimed: _Claimed) -> None:
        for row, at in zip(claimed.rows, claimed.times):
            previous = self.last_by_address.get(row.address)
            task = asyncio.create_task(self._deliver(row, at, previous))
            self.tasks.add(task)
            self.last_by_address[row.address] = task
            task.add_done_callback(lambda t, a=row.address: self._forget(t, a))
        self.unconfirmed += len(claimed.rows)

    def _forget(self, task: asyncio.Task, address: str) -> None:
        self.tasks.discard(task)
        if self.last_by_address.get(address) is task:
            del self.last_by_address[address]

    async def _deliver(self, row: Row, at: float, previous: asyncio.Task | None) -> Delivery | SendFailure:
        try:
            if previous is not None:  # one chat's messages stay in order
                if not previous.done():
                    await asyncio.wait([previous])
                if not previous.cancelled() and previous.result() in WAITING:
                    outcome = Outcome(row, Delivery.DEFERRED, "an earlier message to this chat is not out yet")
                else:
                    outcome = await self._send_at(row, at)
            else:
                outcome = await self._send_at(row, at)
        except asyncio.CancelledError:
            outcome = Outcome(row, Delivery.DEFERRED, "stopped")
        except Exception as exc:
            log.exception("outbox %s: sending row %s failed unexpectedly", self.channel, row.id)
            outcome = Outcome(row, SendFailure.RETRYABLE, f"{type(exc).__name__}: {exc}")
        self.outcomes.append(outcome)
        self.wake.set()
        return outcome.kind

    async def _send_at(self, row: Row, at: float) -> Outcome:
        lease = self.d.settings.outbox_lease.total_seconds()
        if at - time.monotonic() > lease / 2:  # never hold a claim near its lease's end
            return Outcome(row, Delivery.DEFERRED, "its send slot is too far ahead")
        while True:
            now = time.monotonic()
            if self.d.stopping:
                return Outcome(row, Delivery.DEFERRED, "stopping")
            if self.paused_until > now:  # a 429: back to pending, claimed again after the pause
                return Outcome(row, Delivery.DEFERRED, "the channel is paused")
            wait = at - now
            if wait <= 0:
                break
            try:
                await asyncio.wait_for(self.d._stop.wait(), wait)
            except asyncio.TimeoutError:
                pass
        if self.interval and now - at > self.interval * LATE_TOLERANCE:
            # Woken too late (a busy machine, a slow first connection): sent now it would bunch
            # with the slots after it, so it goes back to pending and takes a fresh slot. Every
            # send starts within a quarter interval of its slot: at 29.25/s no second holds 31
            # (a send slowed down after its start bunches too: the guard in send_paced sees to it).
            return Outcome(row, Delivery.DEFERRED, "late for its send slot")
        if self._is_blocked(row.address):  # an earlier message to this chat answered 403
            return Outcome(row, Delivery.GONE, self.blocked[row.address][1])
        try:
            out = Outbound.from_dict(row.payload)
        except Exception as exc:  # noqa: BLE001 - a payload unreadable for any reason is that row's permanent failure
            return Outcome(row, SendFailure.PERMANENT, f"unreadable payload: {type(exc).__name__}: {exc}")
        timeout = lease * 0.8  # an answer must come before the claim's lease runs out
        try:  # the guard's few ms come after the lateness rule: a send held there bunches with nothing
            provider_id = await asyncio.wait_for(send_paced(self.sender, self.pacing.starts, row.address, out,
                                                            row.kind), timeout)
        except SendError as exc:
            reason = exc.reason or exc.failure.value
            if exc.failure is SendFailure.RATE_LIMITED:
                self._pause_locally(max(exc.retry_after, 0.5))
                self.wake.set()
            elif exc.failure is SendFailure.UNREACHABLE:
                self.blocked[row.address] = (time.monotonic(), reason)
            return Outcome(row, exc.failure, reason, retry_after=exc.retry_after)
        except asyncio.TimeoutError:
            return Outcome(row, SendFailure.RETRYABLE, f"no answer within {timeout:.0f}s")
        return Outcome(row, Delivery.SENT, provider_id=str(provider_id or ""))

    # -- recording outcomes
    async def _settle(self, *, force: bool) -> None:
        if not self.outcomes:
            return
        half = max(1, self.d.settings.outbox_batch_size // 2)
        due = (force or not self.tasks or len(self.outcomes) >= half
               or time.monotonic() - self.outcomes[0].at >= SETTLE_AFTER
               or any(o.kind in (SendFailure.RATE_LIMITED, SendFailure.UNREACHABLE) for o in self.outcomes))
        if not due:
            return
        outcomes, self.outcomes = self.outcomes, []
        try:
            paused_for = await asyncio.to_thread(record, self.d.db, self.channel, self.d.worker_id, self.d.settings,
                                                 outcomes, paced=bool(self.pacing.rate))
        except BaseException:
            self.outcomes = outcomes + self.outcomes  # kept (and still counted unconfirmed): tried again
            raise
        self.unconfirmed -= len(outcomes)
        for o in outcomes:
            self.counts[o.kind.value] = self.counts.get(o.kind.value, 0) + 1
        if paused_for > 0:
            self._pause_locally(paused_for)

    def report(self) -> None:
        if self.counts:
            counts, self.counts = self.counts, {}
            log.info("outbox %s: %s", self.channel, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


# ---------------------------------------------------------------- the scheduler job (katilim run)
def outbox_job(app) -> Job:
    """`katilim run`: the dispatcher runs beside the channels; on SQLite, when another dispatcher
    is live, this process handles conversations only and takes over when the other one is gone."""
    # The terminal prints its own resident's rows as they fall due (handlers/console.py); the
    # rows of other terminal residents wait for their next `katilim chat`.
    senders = {name: sender for name, sender in app.senders.items() if name not in LOCAL_CHANNELS}
    dispatcher = Dispatcher(app, senders, app.worker_id, app.settings, role="run", retry_when_refused=True)

    async def run() -> None:
        if not dispatcher.started:
            await dispatcher.start()

    return Job("outbox", HEARTBEAT_INTERVAL, run, dispatcher.stop)
