"""The notification orchestrator.

``Dispatcher.notify(notification)`` is the hand-off the alert service calls (new firing, escalated, re-notify,
resolved); it only queues and returns at once. A router thread plans the deliveries (routes), writes them to the
delivery log as pending and hands them to one worker thread per channel. Each channel worker groups what arrives
within the channel's window into one message, respects the channel's rate limit (a backlog goes out as grouped
messages when the limit allows, nothing is dropped), sends, and retries failures with exponential backoff; every
attempt is written to the delivery log. A message waiting for a retry holds back the channel's next messages so
order is kept and a failing endpoint is not hammered; what arrives meanwhile is grouped.

``stop()`` drains: pending groups are sent at once (still within the rate limit) until ``stop_timeout_s``; what is
left stays pending/retrying in the log and is resumed by the next ``start()``.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from alerts import metrics
from alerts.notify.channels import Channel, ChannelUnavailable, DeliveryRejected, OutboundMessage, build_channel
from alerts.notify.config import ChannelConfig, NotifyConfig, RateLimitConfig, effective_rate_limit
from alerts.notify.log import DeliveryLog
from alerts.notify.routing import (
    Batcher,
    Limiter,
    Notification,
    NotificationKind,
    RetryPolicy,
    TokenBucket,
    Unlimited,
    WindowLimiter,
    plan,
)
from alerts.notify.templates import Renderer
from alerts.types import Alert
from core import clock as core_clock

logger = logging.getLogger(__name__)
ROUTE_BATCH = 500  # notifications logged per transaction at most (a burst, e.g. V1 for every vehicle at 18:00)

NotifySink = Callable[[Notification], None]
Item = tuple[int, Notification]  # (delivery log id, notification)


def make_limiter(rl: RateLimitConfig | None, now: datetime) -> Limiter:
    if rl is None:
        return Unlimited()
    if rl.strategy == "window":
        return WindowLimiter(rl.messages, timedelta(seconds=rl.per_s))
    return TokenBucket(rl.messages, rl.messages / rl.per_s, now)


@dataclass(slots=True)
class _Outgoing:
    message: OutboundMessage
    ids: list[int]
    attempts: int
    next_at: datetime


class ChannelWorker:
    """One channel: grouping, rate limit, sending with retries, in its own thread."""

    def __init__(
        self,
        cfg: ChannelConfig,
        channel: Channel,
        log: DeliveryLog,
        retry: RetryPolicy,
        clock: Callable[[], datetime],
        region_name: Callable[[str], str] | None = None,
        idle_wait_s: float = 1.0,
    ) -> None:
        self.name = cfg.name
        self.channel = channel
        self.log = log
        self.retry = retry
        self.clock = clock
        self.renderer = Renderer(cfg.language, region_name)
        self.batcher: Batcher[Item] = Batcher(timedelta(seconds=cfg.group_window_s), cfg.max_group)
        self.limiter = make_limiter(effective_rate_limit(cfg), clock())
        self.idle_wait_s = idle_wait_s
        self.messages_sent = 0
        self.messages_failed = 0
        self._cond = threading.Condition()
        self._inbox: list[Item] = []
        self._stopping = False
        self._deadline: datetime | None = None
        self._retry: _Outgoing | None = None
        self._thread = threading.Thread(target=self._run, name=f"notify-{cfg.name}", daemon=False)

    def start(self) -> None:
        self._thread.start()

    def submit(self, items: Sequence[Item]) -> None:
        with self._cond:
            self._inbox.extend(items)
            self._cond.notify()

    def request_stop(self, deadline: datetime) -> None:
        with self._cond:
            self._stopping = True
            self._deadline = deadline
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # --- the loop ---------------------------------------------------------------------------------------

    def _next_event(self, now: datetime, force: bool) -> datetime | None:
        if self._retry is not None:
            return max(self._retry.next_at, self.limiter.next_free(now))
        if len(self.batcher):
            ready = now if force else (self.batcher.ready_at() or now)
            return max(ready, self.limiter.next_free(now))
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._inbox:
                    now = self.clock()
                    event = self._next_event(now, self._stopping)
                    if event is None:
                        timeout = self.idle_wait_s
                    else:
                        timeout = min(self.idle_wait_s, max(0.0, (event - now).total_seconds()))
                    if self._stopping and self._deadline is not None:
                        timeout = min(timeout, max(0.0, (self._deadline - now).total_seconds()))
                    if timeout > 0:
                        self._cond.wait(timeout)
                items, self._inbox = self._inbox, []
                stopping = self._stopping
            now = self.clock()
            if items:
                self.batcher.extend(items, now)
            try:
                self._step(now, force=stopping)
            except Exception:
                logger.exception("notification channel %s: unexpected error", self.name)
            if stopping:
                with self._cond:
                    idle = not self._inbox and self._retry is None and not len(self.batcher)
                if idle:
                    break
                if self._deadline is not None and self.clock() >= self._deadline:
                    left = len(self.batcher) + (len(self._retry.ids) if self._retry else 0)
                    logger.warning(
                        "notification channel %s stopped with %d notification(s) unsent; resumed at next start",
                        self.name,
                        left,
                    )
                    break

    def _step(self, now: datetime, force: bool) -> None:
        if self._retry is not None:
            if now >= self._retry.next_at and self.limiter.try_acquire(now):
                self._send(self._retry, now)
            return
        if not len(self.batcher) or not (force or self.batcher.is_ready(now)):
            return
        if not self.limiter.try_acquire(now):
            return
        batch = self.batcher.take(now, force=True)
        notifications = tuple(n for _, n in batch)
        message = OutboundMessage(
            message_id=uuid.uuid4().hex,
            rendered=self.renderer.render(notifications),
            notifications=notifications,
            language=self.renderer.language,
        )
        self._send(_Outgoing(message, [i for i, _ in batch], 0, now), now)

    def _send(self, out: _Outgoing, now: datetime) -> None:
        attempt = out.attempts + 1
        ok, retryable, error, status = False, True, None, None
        try:
            self.channel.send(out.message, now)
            ok = True
        except ChannelUnavailable as exc:
            error, status = str(exc), exc.status
        except DeliveryRejected as exc:
            error, status, retryable = str(exc), exc.status, False
        except Exception as exc:  # an adapter bug must not kill the worker; retried like a transient failure
            logger.exception("notification channel %s: send raised", self.name)
            error = f"{type(exc).__name__}: {exc}"
        next_at = None if ok or not retryable else self.retry.next_attempt_at(attempt, self.clock())
        final = ok or next_at is None
        metrics.NOTIFY_MESSAGES.labels(self.name, "sent" if ok else "failed" if final else "retry").inc()
        if ok:
            self._retry = None
            self.messages_sent += 1
        elif final:
            self._retry = None
            self.messages_failed += 1
            logger.error(
                "notification channel %s: message %s with %d alert(s) failed after %d attempt(s): %s",
                self.name,
                out.message.message_id,
                len(out.ids),
                attempt,
                error,
            )
        else:
            assert next_at is not None
            self._retry = _Outgoing(out.message, out.ids, attempt, next_at)
            logger.warning(
                "notification channel %s: attempt %d failed (%s), retry at %s", self.name, attempt, error, next_at
            )
        self.log.attempt(
            out.ids,
            message_id=out.message.message_id,
            channel=self.name,
            attempt=attempt,
            ok=ok,
            status_code=status,
            error=error,
            final=final,
            now=now,
        )


class Dispatcher:
    """Receives notifications, routes, groups, rate-limits and sends them; see the module doc.

    ``channels`` overrides the adapters built from the config (by channel name), e.g. for a test seam.
    """

    def __init__(
        self,
        config: NotifyConfig,
        log: DeliveryLog,
        ancestors_of: Callable[[str], Sequence[str]],
        *,
        channels: Mapping[str, Channel] | None = None,
        region_name: Callable[[str], str] | None = None,
        clock: Callable[[], datetime] = core_clock.now,
        retry: RetryPolicy | None = None,
        stop_timeout_s: float = 5.0,
        idle_wait_s: float = 1.0,
        resume: bool = True,
    ) -> None:
        self.config = config
        self.log = log
        self.ancestors_of = ancestors_of
        self.clock = clock
        self.routes = config.to_routes()
        self.stop_timeout_s = stop_timeout_s
        self.idle_wait_s = idle_wait_s
        self.resume = resume
        retry = retry or config.retry.to_policy()
        overrides = dict(channels or {})
        self.workers: dict[str, ChannelWorker] = {}
        for cfg in config.channels:
            adapter = overrides.get(cfg.name) or build_channel(cfg)
            self.workers[cfg.name] = ChannelWorker(cfg, adapter, log, retry, clock, region_name, idle_wait_s)
        self._intake: queue.SimpleQueue[Notification | None] = queue.SimpleQueue()
        self._router = threading.Thread(target=self._route_loop, name="notify-router", daemon=False)
        self._stop_event = threading.Event()
        self._started = False
        self._stopped = False

    # --- the hand-off ---------------------------------------------------------------------------------

    def notify(self, notification: Notification) -> None:
        """Queue a notification; never blocks, never raises for delivery problems. Thread-safe."""
        if self._stopped:
            logger.warning("notification for alert %s after stop: ignored", notification.alert.id)
            return
        self._intake.put(notification)
        metrics.NOTIFY_QUEUE.set(self._intake.qsize())

    __call__ = notify

    def on_alert(self, kind: NotificationKind, alert: Alert, at: datetime) -> None:
        """Shorthand for ``notify(Notification(kind, alert, at))`` (the alert's own region, level 0)."""
        self.notify(Notification(kind, alert, at))

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.resume:
            resumed = 0
            for name, worker in self.workers.items():
                items = self.log.unfinished(name)
                if items:
                    worker.submit(items)
                    resumed += len(items)
            if resumed:
                logger.info("resuming %d unfinished notification deliveries", resumed)
        for worker in self.workers.values():
            worker.start()
        self._router.start()

    def stop(self) -> None:
        """Route what was handed over, drain the channels until ``stop_timeout_s``, close the adapters."""
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            self._intake.put(None)
            self._router.join(self.stop_timeout_s)
            self._stop_event.set()
            self._router.join(self.stop_timeout_s)
            deadline = self.clock() + timedelta(seconds=self.stop_timeout_s)
            for worker in self.workers.values():
                worker.request_stop(deadline)
            for worker in self.workers.values():
                worker.join(self.stop_timeout_s + 2 * self.idle_wait_s + 30)
        for worker in self.workers.values():
            try:
                worker.channel.close()
            except Exception:
                logger.exception("closing notification channel %s", worker.name)

    def __enter__(self) -> Dispatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- routing thread ---------------------------------------------------------------------------------

    def _route_loop(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._drain()
            if not batch:
                continue
            for attempt in range(1, 6):
                try:
                    self._route(batch)
                    break
                except Exception:
                    logger.exception(
                        "routing %d notifications (alert %s first) failed (attempt %d)",
                        len(batch),
                        batch[0].alert.id,
                        attempt,
                    )
                    if self._stop_event.wait(min(self.idle_wait_s * attempt, 5.0)):
                        break

    def _drain(self) -> tuple[list[Notification], bool]:
        """Block for the next notification, then take whatever else is waiting (up to ``ROUTE_BATCH``): a burst
        of alerts is logged in one transaction instead of one commit (and fsync) each. Returns (batch, stop)."""
        batch: list[Notification] = []
        item = self._intake.get()
        while item is not None:
            batch.append(item)
            if len(batch) >= ROUTE_BATCH:
                break
            try:
                item = self._intake.get_nowait()
            except queue.Empty:
                break
        metrics.NOTIFY_QUEUE.set(self._intake.qsize())
        return batch, item is None

    def _route(self, batch: Sequence[Notification]) -> None:
        planned: list[tuple[str | None, Notification]] = []
        for n in batch:
            routed: list[tuple[str | None, Notification]] = [
                (ch, tn) for ch, tn in plan(n, self.routes, self.ancestors_of) if ch in self.workers
            ]
            if not routed:
                logger.debug("no route for alert %s (%s)", n.alert.id, n.kind.value)
                routed = [(None, n)]
            planned.extend(routed)
        recorded = self.log.record(planned, self.clock())
        by_channel: dict[str, list[Item]] = {}
        for row_id, ch, tn in recorded:
            if ch is not None:
                by_channel.setdefault(ch, []).append((row_id, tn))
        for ch, items in by_channel.items():
            self.workers[ch].submit(items)
