from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

router = APIRouter(prefix="/ops", tags=["operations"])


class Health(BaseModel):
    status: str = "ok"


@router.get("/health", summary="Liveness")
async def health() -> Health:
    """200 while the process is alive; touches no dependency."""
    return Health()
