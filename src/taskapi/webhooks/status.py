"""A delivery's status, apart from the API's schemas: `taskapi webhooks` offers the names as
choices of --status, and importing the schemas (with every domain's models behind them) would
make every `taskapi` command start slower."""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class DeliveryStatus(IntEnum):
    """As stored (webhook_deliveries.status); named in the API."""

    PENDING = 0
    DELIVERED = 1
    FAILED = 2


STATUS_NAMES: Final = {status: status.name.lower() for status in DeliveryStatus}
