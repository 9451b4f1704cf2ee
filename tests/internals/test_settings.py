"""Settings: the environment variables of the README's configuration table, `.env`, and
SECRET_KEY per environment."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from taskapi.kit.config import Settings, SettingsError, resolve_secret_key
from taskapi.kit.security import PasswordHashing
from tests.conftest import ROOT

# Every variable the HTTP contract names that Settings reads itself
# (AWS_* credentials are read by the S3 client, not by Settings).
CONTRACT_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "ACCESS_TOKEN_TTL_SECONDS",
    "REFRESH_TOKEN_TTL_SECONDS",
    "STORAGE_BACKEND",
    "STORAGE_DIR",
    "S3_BUCKET",
    "S3_ENDPOINT_URL",
    "S3_REGION",
    "MAX_UPLOAD_BYTES",
    "RATE_LIMIT_ENABLED",
    "RATE_LIMIT_USER_BURST",
    "RATE_LIMIT_USER_PER_MINUTE",
    "RATE_LIMIT_AUTH_BURST",
    "RATE_LIMIT_AUTH_PER_MINUTE",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "HOST",
    "PORT",
    "WEB_CONCURRENCY",
    "ENVIRONMENT",
    "CORS_ORIGINS",
)

LONG_RANDOM_KEY = secrets.token_urlsafe(48)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of the developer's shell and no stray `.env` may decide these tests."""
    for name in CONTRACT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("SECRET_KEY_FILE", raising=False)
    monkeypatch.chdir(tmp_path)


def settings_for(environment: str, **values: Any) -> Settings:
    return Settings(_env_file=None, environment=environment, **values)  # type: ignore[call-arg]


# --- SECRET_KEY in production --------------------------------------------------------------------


def test_production_refuses_a_missing_key(tmp_path: Path) -> None:
    key_file = tmp_path / "var" / "secret_key"
    with pytest.raises(SettingsError) as caught:
        resolve_secret_key(settings_for("production", secret_key_file=key_file))
    message = str(caught.value)
    assert "SECRET_KEY" in message
    assert "32 bytes" in message
    assert "token_urlsafe" in message  # tells the operator how to make one
    assert not key_file.exists()  # production never invents a key of its own


def test_production_refuses_an_empty_key() -> None:
    with pytest.raises(SettingsError, match="SECRET_KEY"):
        resolve_secret_key(settings_for("production", secret_key=""))


@pytest.mark.parametrize("default", ["changeme", "CHANGEME", " insecure ", "change-me"])
def test_production_refuses_a_well_known_default(default: str) -> None:
    with pytest.raises(SettingsError) as caught:
        resolve_secret_key(settings_for("production", secret_key=default))
    message = str(caught.value)
    assert "SECRET_KEY" in message
    assert "random key" in message
    assert default.strip() not in message  # the rejected value is not printed back


def test_production_refuses_a_key_shorter_than_32_bytes() -> None:
    with pytest.raises(SettingsError) as caught:
        resolve_secret_key(settings_for("production", secret_key="x" * 31))
    message = str(caught.value)
    assert "SECRET_KEY" in message
    assert "32 bytes" in message
    assert "longer" in message


def test_production_accepts_a_long_random_key() -> None:
    resolved = resolve_secret_key(settings_for("production", secret_key=LONG_RANDOM_KEY))
    assert resolved.signing_key == LONG_RANDOM_KEY
    exactly_32 = resolve_secret_key(settings_for("production", secret_key="k" * 32))
    assert exactly_32.signing_key == "k" * 32


def test_production_reads_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("SECRET_KEY", "changeme")
    with pytest.raises(SettingsError):
        resolve_secret_key(Settings(_env_file=None))  # type: ignore[call-arg]
    monkeypatch.setenv("SECRET_KEY", LONG_RANDOM_KEY)
    resolved = resolve_secret_key(Settings(_env_file=None))  # type: ignore[call-arg]
    assert resolved.is_production
    assert resolved.signing_key == LONG_RANDOM_KEY


def test_the_key_is_not_shown_in_the_settings_repr() -> None:
    settings = settings_for("production", secret_key=LONG_RANDOM_KEY)
    assert LONG_RANDOM_KEY not in repr(settings)
    assert LONG_RANDOM_KEY not in str(settings.model_dump())


# --- SECRET_KEY in development -------------------------------------------------------------------


def test_development_generates_a_private_key_file_and_reuses_it(tmp_path: Path) -> None:
    key_file = tmp_path / "var" / "secret_key"
    first = resolve_secret_key(settings_for("development", secret_key_file=key_file))
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = first.signing_key
    assert len(key.encode()) >= 32
    assert key_file.read_text().strip() == key

    second = resolve_secret_key(settings_for("development", secret_key_file=key_file))
    assert second.signing_key == key  # tokens survive a restart


def test_development_keys_differ_between_checkouts(tmp_path: Path) -> None:
    one = resolve_secret_key(settings_for("development", secret_key_file=tmp_path / "a" / "key"))
    two = resolve_secret_key(settings_for("development", secret_key_file=tmp_path / "b" / "key"))
    assert one.signing_key != two.signing_key


@pytest.mark.parametrize("content", ["", "short", "x" * 31 + "\n"])
def test_development_replaces_a_truncated_key_file(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "secret_key"
    key_file.write_text(content)
    resolved = resolve_secret_key(settings_for("development", secret_key_file=key_file))
    key = resolved.signing_key
    assert len(key.encode()) >= 32
    assert key != content.strip()
    assert key_file.read_text().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_development_uses_an_explicit_key_and_writes_no_file(tmp_path: Path) -> None:
    key_file = tmp_path / "var" / "secret_key"
    resolved = resolve_secret_key(
        settings_for("development", secret_key="dev", secret_key_file=key_file)
    )
    assert resolved.signing_key == "dev"  # short keys are the developer's business
    assert not key_file.exists()


def test_the_default_key_file_lives_under_var(tmp_path: Path) -> None:
    settings = settings_for("development")
    assert not settings.secret_key_file.is_absolute()
    assert settings.secret_key_file.parts[0] == "var"
    resolved = resolve_secret_key(settings)  # cwd is tmp_path (see clean_environment)
    assert (tmp_path / "var" / "secret_key").read_text().strip() == resolved.signing_key


# --- SECRET_KEY in tests -------------------------------------------------------------------------


def test_test_environment_gets_a_random_key_and_writes_nothing(tmp_path: Path) -> None:
    key_file = tmp_path / "var" / "secret_key"
    one = resolve_secret_key(settings_for("test", secret_key_file=key_file))
    two = resolve_secret_key(settings_for("test", secret_key_file=key_file))
    assert len(one.signing_key.encode()) >= 32
    assert one.signing_key != two.signing_key
    assert not key_file.exists()
    assert not (tmp_path / "var").exists()


def test_signing_key_without_a_key_says_what_to_do() -> None:
    with pytest.raises(SettingsError, match="resolve_secret_key"):
        _ = settings_for("test").signing_key


# --- environment variables and .env --------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "attribute", "expected"),
    [
        ("DATABASE_URL", "postgresql+asyncpg://u@db:5433/x", "database_url", None),
        ("REDIS_URL", "redis://cache:6380/2", "redis_url", None),
        ("ACCESS_TOKEN_TTL_SECONDS", "120", "access_token_ttl_seconds", 120),
        ("REFRESH_TOKEN_TTL_SECONDS", "3600", "refresh_token_ttl_seconds", 3600),
        ("STORAGE_BACKEND", "s3", "storage_backend", None),
        ("STORAGE_DIR", "/srv/files", "storage_dir", Path("/srv/files")),
        ("S3_BUCKET", "my-bucket", "s3_bucket", None),
        ("S3_ENDPOINT_URL", "http://127.0.0.1:9000", "s3_endpoint_url", None),
        ("S3_REGION", "eu-west-1", "s3_region", None),
        ("MAX_UPLOAD_BYTES", "1048576", "max_upload_bytes", 1048576),
        ("RATE_LIMIT_ENABLED", "false", "rate_limit_enabled", False),
        ("RATE_LIMIT_USER_BURST", "7", "rate_limit_user_burst", 7),
        ("RATE_LIMIT_USER_PER_MINUTE", "70", "rate_limit_user_per_minute", 70),
        ("RATE_LIMIT_AUTH_BURST", "3", "rate_limit_auth_burst", 3),
        ("RATE_LIMIT_AUTH_PER_MINUTE", "6", "rate_limit_auth_per_minute", 6),
        ("LOG_LEVEL", "DEBUG", "log_level", None),
        ("LOG_FORMAT", "json", "log_format", None),
        ("HOST", "0.0.0.0", "host", None),  # noqa: S104
        ("PORT", "9001", "port", 9001),
        ("WEB_CONCURRENCY", "4", "web_concurrency", 4),
        ("ENVIRONMENT", "production", "environment", None),
        ("CORS_ORIGINS", "a,b", "cors_origins", ["a", "b"]),
        ("CORS_ORIGINS", " https://a.example , https://b.example ,", "cors_origins", None),
        ("CORS_ORIGINS", "", "cors_origins", []),
    ],
)
def test_environment_variables_of_the_contract(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str, attribute: str, expected: Any
) -> None:
    monkeypatch.setenv(variable, raw)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    if expected is None and attribute == "cors_origins":
        expected = ["https://a.example", "https://b.example"]
    elif expected is None:
        expected = raw
    assert getattr(settings, attribute) == expected


def test_secret_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_KEY", LONG_RANDOM_KEY)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.signing_key == LONG_RANDOM_KEY


def test_defaults_of_the_contract() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.environment == "development"
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.storage_backend == "local"
    assert settings.max_upload_bytes == 25 * 1024 * 1024
    assert settings.rate_limit_enabled is True
    assert settings.cors_origins == []
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.secret_key is None


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("ENVIRONMENT", "staging"),
        ("PORT", "70000"),
        ("WEB_CONCURRENCY", "0"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_invalid_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str
) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert variable.lower() in str(caught.value)


def test_dotenv_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        "DATABASE_URL=postgresql+asyncpg://dotenv@127.0.0.1:5432/from_dotenv\n"
        "RATE_LIMIT_USER_BURST=11\n"
        "CORS_ORIGINS=https://one.example,https://two.example\n"
        "WEB_CONCURRENCY=3\n"
        "SOMETHING_UNRELATED=ignored\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.database_url.endswith("/from_dotenv")
    assert settings.rate_limit_user_burst == 11
    assert settings.cors_origins == ["https://one.example", "https://two.example"]
    assert settings.web_concurrency == 3

    monkeypatch.setenv("WEB_CONCURRENCY", "5")
    assert Settings().web_concurrency == 5


def test_gitignore_keeps_secrets_and_local_state_out_of_git() -> None:
    lines = {
        line.strip()
        for line in Path(ROOT, ".gitignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    assert lines & {"var/", "/var/", "var", "/var"}, (
        "var/ (dev secret key, uploads) must be ignored"
    )
    assert lines & {".env", "/.env"}, ".env must be ignored"


async def test_password_hashing_defaults_meet_owasp_minimum_for_argon2id() -> None:
    """The suite hashes cheaply (conftest.make_settings); the service's own defaults must be at
    least OWASP's Argon2id minimum: m=19 MiB, t=2, p=1."""
    settings = Settings(_env_file=None, environment="test", secret_key="x" * 40)  # type: ignore[call-arg]
    assert settings.argon2_memory_cost_kib >= 19 * 1024
    assert settings.argon2_time_cost >= 2
    assert settings.argon2_parallelism >= 1
    hashing = PasswordHashing(settings)
    try:
        stored = await hashing.hash("correct horse battery staple")
    finally:
        hashing.close()
    assert stored.startswith("$argon2id$")
    assert f"m={settings.argon2_memory_cost_kib},t={settings.argon2_time_cost}," in stored
    assert settings.password_hash_threads >= 1
