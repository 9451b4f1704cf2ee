"""`taskapi webhooks deliveries` and `taskapi webhooks redeliver`: the operator's view of the
delivery log across every webhook, and sending deliveries again (after an outage on the
receivers' side, say) without going through each owner's API."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from taskapi.kit.cli_args import positive
from taskapi.kit.config import Settings
from taskapi.webhooks.status import STATUS_NAMES, DeliveryStatus


async def _with_session(settings: Settings, work: Any) -> Any:
    from taskapi.kit.db import create_engine, create_sessionmaker

    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            result = await work(session)
            await session.commit()
            return result
    finally:
        await engine.dispose()


def cmd_deliveries(settings: Settings, args: argparse.Namespace) -> int:
    """List deliveries, newest first: id, webhook, event, status, attempts, the last answer
    (status or error) and when the next attempt is due."""
    from taskapi.webhooks import service

    status = None if args.status is None else DeliveryStatus[args.status.upper()]
    rows = asyncio.run(
        _with_session(
            settings,
            lambda session: service.operator_deliveries(session, args.webhook, status, args.limit),
        )
    )
    print("id\twebhook\tevent\tstatus\tattempts\tlast answer\tnext attempt\turl")
    for row in rows:
        answer = row["last_error"] or (row["response_status"] or "")
        next_attempt = (
            row["next_attempt_at"].isoformat(timespec="seconds")
            if row["status"] == DeliveryStatus.PENDING
            else ""
        )
        event = row["event_type"] + (f" {row['event_id']}" if row["event_id"] else "")
        print(
            f"{row['id']}\t{row['webhook_id']}\t{event}\t"
            f"{STATUS_NAMES[DeliveryStatus(row['status'])]}\t{row['attempts']}\t{answer}\t"
            f"{next_attempt}\t{row['url']}"
        )
    return 0


def cmd_redeliver(settings: Settings, args: argparse.Namespace) -> int:
    """Queue deliveries again now, with the same `webhook-id` and a fresh 24 hours of retries:
    the given ids, and with --all-failed every delivery that failed for good (of --webhook only,
    if given) whose webhook is active."""
    from taskapi.jobs.queue import utcnow
    from taskapi.webhooks import service

    if not args.ids and not args.all_failed:
        print("taskapi: give delivery ids or --all-failed", file=sys.stderr)
        return 1
    queued: Sequence[int] = asyncio.run(
        _with_session(
            settings,
            lambda session: service.operator_redeliver(
                session, args.ids, args.all_failed, args.webhook, utcnow()
            ),
        )
    )
    missing = sorted(set(args.ids) - set(queued))
    print(f"queued {len(queued)} deliveries again")
    if missing:
        print(f"taskapi: no such delivery: {', '.join(map(str, missing))}", file=sys.stderr)
        return 1
    return 0


def register(commands: Any) -> None:
    """Add `webhooks deliveries` and `webhooks redeliver` to the `taskapi` command."""
    webhooks = commands.add_parser("webhooks", help="the webhook delivery log; send again")
    sub = webhooks.add_subparsers(dest="webhooks_command", required=True, metavar="COMMAND")
    listing = sub.add_parser(
        "deliveries", help="list deliveries, newest first", description=cmd_deliveries.__doc__
    )
    listing.add_argument("--webhook", type=positive, metavar="ID", help="only this webhook's")
    listing.add_argument("--status", choices=list(STATUS_NAMES.values()))
    listing.add_argument("--limit", type=positive, default=50, metavar="N", help="default 50")
    listing.set_defaults(handler=cmd_deliveries)
    again = sub.add_parser(
        "redeliver", help="queue deliveries again", description=cmd_redeliver.__doc__
    )
    again.add_argument("ids", nargs="*", type=positive, metavar="DELIVERY_ID")
    again.add_argument(
        "--all-failed", action="store_true", help="also every delivery that failed for good"
    )
    again.add_argument("--webhook", type=positive, metavar="ID", help="with --all-failed: its")
    again.set_defaults(handler=cmd_redeliver)
