"""Settings, read once per process from the environment and `.env`.

Every setting is listed with its default in the README's configuration table and in
`.env.example` (tests/docs/test_docs.py keeps both in step with this model).
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_KEY_BYTES = 32

# Values people paste from examples; accepting one in production would make every token forgeable.
KNOWN_DEFAULT_SECRETS = frozenset(
    {
        "changeme",
        "change-me",
        "change_me",
        "secret",
        "secret-key",
        "secret_key",
        "dev",
        "development",
        "insecure",
        "please-change-me",
        "replace-me-with-a-long-random-string-of-at-least-32-bytes",
    }
)


class SettingsError(RuntimeError):
    """Configuration that must not be run with; the message is meant for the operator."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    environment: Literal["development", "production", "test"] = "development"

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/taskapi"
    # Per worker process. Large enough for the concurrency one worker serves, so connections
    # are reused rather than opened and closed (each new one also re-prepares statements);
    # workers x (size + overflow) must stay under PostgreSQL's max_connections.
    database_pool_size: int = Field(default=32, ge=1)
    database_max_overflow: int = Field(default=8, ge=0)
    database_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    # Bounds how long a request waits on a PostgreSQL that is down or unreachable before its 503.
    database_connect_timeout_seconds: float = Field(default=2.0, gt=0)
    # An API request has no business running a 10 s statement; asyncpg also gives up 1 s later.
    database_statement_timeout_ms: int = Field(default=10_000, ge=1)
    # asyncpg's prepared-statement cache; set 0 behind pgbouncer in transaction mode.
    database_statement_cache_size: int = Field(default=100, ge=0)

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Short timeouts: a slow Redis must cost a request milliseconds, not seconds.
    redis_connect_timeout_seconds: float = Field(default=0.25, gt=0)
    redis_socket_timeout_seconds: float = Field(default=0.25, gt=0)
    # After a Redis failure, leave it alone this long before trying again (no retry storms).
    redis_retry_cooldown_seconds: float = Field(default=1.0, ge=0)
    redis_key_prefix: str = "taskapi:"
    # Also bounds staleness if one process could not reach Redis to invalidate while others could.
    # 0 turns the stats cache off (every read aggregates in PostgreSQL).
    stats_cache_ttl_seconds: int = Field(default=60, ge=0)
    # Who an access token belongs to (auth/principal_cache.py); 0 turns the cache off. Only
    # bounds staleness if a process could not reach Redis to invalidate while others could.
    principal_cache_ttl_seconds: int = Field(default=60, ge=0)

    secret_key: SecretStr | None = None
    secret_key_file: Path = Path("var/secret_key")
    jwt_issuer: str = "taskapi"
    jwt_audience: str = "taskapi"
    access_token_ttl_seconds: int = Field(default=15 * 60, ge=1)
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=1)
    # A rotated refresh token presented again this soon is a client of the login that lost a
    # race to refresh, not a thief (RFC 9700 section 4.14.2); 0 makes every replay reuse.
    refresh_reuse_grace_seconds: int = Field(default=10, ge=0, le=300)

    # Argon2id; defaults are OWASP's minimum profile (m=19 MiB, t=2, p=1).
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_memory_cost_kib: int = Field(default=19 * 1024, ge=8)
    argon2_parallelism: int = Field(default=1, ge=1)
    # Half the cores (at least one): Argon2 is memory-hard, and beyond that a login storm's
    # hashing evicts the caches every other request runs on.
    password_hash_threads: int = Field(
        default_factory=lambda: max(1, (os.cpu_count() or 2) // 2), ge=1
    )

    storage_backend: Literal["local", "s3"] = "local"
    storage_dir: Path = Path("var/storage")
    s3_bucket: str = "taskapi"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    # Per process: recently downloaded objects of up to 1 MiB kept in memory (0: off).
    storage_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    # Every other request body (JSON); larger ones are refused with 413 before being read.
    max_request_bytes: int = Field(default=1024 * 1024, ge=1)
    # The request line plus headers, enforced by `taskapi serve` (431 beyond it).
    max_request_header_bytes: int = Field(default=32 * 1024, ge=1024)

    # Where `taskapi migrate` finds alembic.ini (migrations/ beside it); unset: the source
    # checkout's. An installed package (the container image) has no checkout, so it sets this.
    # Same name as Alembic's own variable, so `alembic` and `taskapi migrate` agree.
    alembic_config: Path | None = None

    # Background jobs: the API process runs a worker too unless this is off (separate workers).
    worker_embedded: bool = True
    job_poll_interval_seconds: float = Field(default=1.0, gt=0)
    orphan_sweep_interval_seconds: int = Field(default=3600, ge=1)
    # Stored objects younger than this are never swept: they may be uploads still in flight.
    orphan_grace_seconds: int = Field(default=3600, ge=0)
    due_soon_interval_seconds: int = Field(default=900, ge=1)
    # How often expired Idempotency-Key records are deleted (they stop replaying at expiry anyway).
    idempotency_sweep_interval_seconds: int = Field(default=3600, ge=1)
    # How often the worker folds the stats counts of users who write but rarely read their stats.
    stats_fold_interval_seconds: int = Field(default=300, ge=1)
    # The event log (GET /events): events are kept this long; an older cursor is 410.
    event_retention_days: int = Field(default=7, ge=1)
    # How often the worker deletes events past their retention.
    event_purge_interval_seconds: int = Field(default=3600, ge=1)
    # GET /events/stream: open streams per user and process (429 beyond), the comment line that
    # keeps idle connections open, and the fallback poll of the log when a wake-up is lost.
    event_streams_per_user: int = Field(default=5, ge=1)
    event_stream_heartbeat_seconds: float = Field(default=15.0, gt=0)
    event_stream_poll_seconds: float = Field(default=1.0, gt=0)
    # The trash: a deleted task is kept (restorable) this long, then deleted for good.
    trash_retention_days: int = Field(default=30, ge=1)
    # How often the worker deletes for good what has outlived the trash's retention.
    trash_purge_interval_seconds: int = Field(default=3600, ge=1)
    # Webhooks: a delivery is a success on a 2xx within this many seconds (API.md: 10 s).
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # Deliveries in flight per worker process, and per webhook within them: a slow receiver
    # holds at most its own share, never the others'.
    webhook_max_in_flight: int = Field(default=64, ge=1)
    webhook_max_in_flight_per_endpoint: int = Field(default=8, ge=1)
    # Loopback, private, link-local, CGNAT and metadata addresses are refused as webhook
    # destinations unless this is on (local development against a receiver on this machine).
    webhook_allow_private_networks: bool = False

    rate_limit_enabled: bool = True
    # Generous for real clients (a burst of 300, then 20/s); the per-IP login bucket is ten times
    # smaller: enough for people sharing an office NAT, far too little for password guessing.
    rate_limit_user_burst: int = Field(default=300, ge=1)
    rate_limit_user_per_minute: int = Field(default=1200, ge=1)
    rate_limit_auth_burst: int = Field(default=30, ge=1)
    rate_limit_auth_per_minute: int = Field(default=60, ge=1)
    # Peers allowed to set X-Forwarded-For (IPs or CIDRs); empty: the socket peer is the client.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    log_level: str = "INFO"
    log_format: Literal["json", "text"] | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    web_concurrency: int = Field(default=1, ge=1)

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def effective_log_format(self) -> Literal["json", "text"]:
        if self.log_format is not None:
            return self.log_format
        return "json" if self.is_production else "text"

    @property
    def signing_key(self) -> str:
        if self.secret_key is None:
            raise SettingsError("SECRET_KEY is not set; call resolve_secret_key() first.")
        return self.secret_key.get_secret_value()


def _check_production_secret(key: SecretStr | None) -> None:
    if key is None or not key.get_secret_value():
        raise SettingsError(
            "SECRET_KEY is not set: production needs a random key of at least 32 bytes "
            '(for example: python -c "import secrets; print(secrets.token_urlsafe(48))").'
        )
    value = key.get_secret_value()
    if value.strip().lower() in KNOWN_DEFAULT_SECRETS:
        raise SettingsError("SECRET_KEY is a well-known default value: set a random key.")
    if len(value.encode()) < MIN_SECRET_KEY_BYTES:
        raise SettingsError(
            f"SECRET_KEY is shorter than {MIN_SECRET_KEY_BYTES} bytes: set a longer random key."
        )


def _load_or_create_dev_secret(path: Path) -> SecretStr:
    """Keep one random key per checkout so tokens survive restarts; never committed (var/)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        existing = path.read_text().strip()
        if len(existing.encode()) >= MIN_SECRET_KEY_BYTES:
            return SecretStr(existing)
        # A truncated or hand-edited file: replace it rather than run with a weak key.
        path.unlink()
        return _load_or_create_dev_secret(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48))
    return SecretStr(path.read_text().strip())


def resolve_secret_key(settings: Settings) -> Settings:
    """Validate or provide SECRET_KEY according to the environment."""
    if settings.is_production:
        _check_production_secret(settings.secret_key)
        return settings
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return settings
    if settings.environment == "test":
        key = SecretStr(secrets.token_urlsafe(48))
    else:
        key = _load_or_create_dev_secret(settings.secret_key_file)
    return settings.model_copy(update={"secret_key": key})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return resolve_secret_key(Settings())
