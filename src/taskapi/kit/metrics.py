"""Prometheus metrics: defined once per process, rendered by `GET /ops/metrics`.

Metrics live at module level because the default registry refuses a second metric of the same
name: tests (and anything else) creating many apps in one process must share them.

With several uvicorn workers (`taskapi serve` sets PROMETHEUS_MULTIPROC_DIR before spawning them)
each process writes its values to files in that directory, and a scrape, answered by whichever
worker accepts it, aggregates every process's files with `MultiProcessCollector`. The mode is
fixed when prometheus_client is imported, so it is read once here too.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

# A `_created` timestamp series beside every counter and histogram doubles the series count for
# nothing Prometheus needs (it detects counter resets itself); multiprocess mode has none anyway.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Prometheus' classic text format, which every scraper understands.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None

HTTP_REQUESTS = Counter(
    "taskapi_http_requests_total",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "taskapi_http_request_duration_seconds",
    "Time from receiving a request to sending the last byte of its response.",
    ["method", "route"],
    # Fewer buckets than the client's default: each one is a series per route (and a file write
    # per request in multiprocess mode); these still separate fast reads from slow writes.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
DB_POOL_IN_USE = Gauge(
    "taskapi_db_pool_connections_in_use",
    "Database connections checked out of the pool.",
    # Summed over the workers that are alive: each one owns its own pool.
    multiprocess_mode="livesum",
)
STATS_CACHE_HITS = Counter("taskapi_stats_cache_hits", "GET /tasks/stats answered from Redis.")
STATS_CACHE_MISSES = Counter(
    "taskapi_stats_cache_misses", "GET /tasks/stats computed in PostgreSQL (miss or Redis down)."
)
STORAGE_CACHE_HITS = Counter(
    "taskapi_storage_cache_hits", "Downloads served from the in-process hot object cache."
)
STORAGE_CACHE_MISSES = Counter(
    "taskapi_storage_cache_misses", "Downloads read from the storage backend."
)
RATE_LIMITED = Counter(
    "taskapi_rate_limited", "Requests refused with 429 by the rate limiter.", ["policy"]
)
REDIS_CALLS = Counter(
    "taskapi_redis_calls",
    "Redis calls by outcome: ok; failed (an error or a timeout, which opens the circuit breaker "
    "for the cool-down); skipped (the breaker was open, the caller fell back without waiting).",
    ["outcome"],
)
WEBHOOK_ATTEMPTS = Counter(
    "taskapi_webhook_attempts",
    "Webhook delivery attempts by outcome: delivered, retry (failed, tried again later), failed "
    "(failed for good after 24 h of retries).",
    ["outcome"],
)
WEBHOOK_ATTEMPT_DURATION = Histogram(
    "taskapi_webhook_attempt_duration_seconds",
    "Time from connecting to a webhook receiver to its answer (or the failure).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WEBHOOK_DELIVERY_LAG = Histogram(
    "taskapi_webhook_delivery_lag_seconds",
    "From an event's transaction to its successful delivery (first attempts only).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
JOBS = Counter("taskapi_jobs", "Background jobs run, by kind and outcome.", ["kind", "outcome"])
# Queue depth is a fact about the shared database, not about a process: the latest reading wins.
JOBS_QUEUED = Gauge(
    "taskapi_jobs_queued", "Jobs waiting or retrying.", multiprocess_mode="mostrecent"
)
JOBS_FAILED = Gauge(
    "taskapi_jobs_failed",
    "Jobs that exhausted their attempts and wait for a person.",
    multiprocess_mode="mostrecent",
)

# Only these methods get their own label value: the method is client-controlled and every
# distinct value would be a new time series.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# labels() takes a lock and builds a key on every call; the children are looked up here instead.
# Bounded: known methods x route templates x statuses.
_request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    key = (method, route, status)
    children = _request_children.get(key)
    if children is None:
        label = method if method in _KNOWN_METHODS else "other"
        children = (
            HTTP_REQUESTS.labels(method=label, route=route, status=str(status)),
            HTTP_DURATION.labels(method=label, route=route),
        )
        _request_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


def instrument_pool(engine: AsyncEngine) -> None:
    """Count checked-out connections as they come and go.

    Reading the pool at scrape time would only see the pool of the worker that answers the
    scrape; counting on checkout and checkin lets every worker keep its own number current.
    """
    pool = engine.sync_engine.pool

    def checked_out(*_args: object) -> None:
        DB_POOL_IN_USE.inc()

    def checked_in(*_args: object) -> None:
        DB_POOL_IN_USE.dec()

    event.listen(pool, "checkout", checked_out)
    event.listen(pool, "checkin", checked_in)


def render() -> bytes:
    """The exposition text. Reads files (multiprocess mode, /proc): call it off the event loop."""
    if MULTIPROCESS_DIR is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def process_exiting() -> None:
    """Drop this worker's live gauges (the pool gauge) from the aggregate."""
    if MULTIPROCESS_DIR is not None:
        multiprocess.mark_process_dead(os.getpid(), MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
