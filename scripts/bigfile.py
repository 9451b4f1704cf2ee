"""Streaming check: push a large file through a real `taskapi serve` and watch its memory.

    .venv/bin/python scripts/bigfile.py [--size-mib 1024] [--backend local|s3|both]

For each backend (local directory, then S3 served by a moto server on loopback) this creates a
fresh database, migrates it, starts `taskapi serve --workers 1` on a free port, registers a user,
creates a task, and then:

- warms up with a small upload + download (one-time lazy imports and first-use allocations);
- records the serving process's RSS (the baseline) and resets its peak (VmHWM);
- uploads a file of --size-mib generated on the fly (multipart body yielded 1 MiB at a time,
  PNG signature first) and checks the 201 and its sha256;
- downloads it streaming, checking size and sha256 while discarding the bytes;
- samples the server's VmRSS every 50 ms during both transfers, and reads VmHWM at the end.

Neither side ever holds the file: the script's own memory stays flat too. The promise checked is
that the server's RSS grows by less than 64 MiB over the baseline; the exit status is 1 when it
does not, or when any transfer fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv this script runs in (make bigfile: .venv/bin)
DATABASE = "taskapi_bigfile"
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/taskapi"
MIB = 1024 * 1024
CHUNK = MIB
WARMUP_BYTES = 16 * MIB  # more than one S3 part (8 MiB), so every code path has run once
GROWTH_LIMIT_MIB = 64
SAMPLE_SECONDS = 0.05
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PASSWORD = "bigfile-password"


# --- the server's memory -------------------------------------------------------------------


def _status_kib(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field_name} in /proc/{pid}/status")


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def hwm_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


def reset_hwm(pid: int) -> bool:
    """Reset the process's peak RSS (Linux >= 4.0); False when the kernel won't."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                found += [int(child) for child in children.read().split()]
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def serving_pid(pid: int) -> tuple[int, str]:
    """The process that handles requests. With `--workers 1` uvicorn serves in the `taskapi
    serve` process itself; with more it spawns worker processes (multiprocessing spawn_main)."""
    pending, descendants = [pid], []
    while pending:
        kids = _children(pending.pop())
        descendants += kids
        pending += kids
    workers = [child for child in descendants if "spawn_main" in _cmdline(child)]
    if len(workers) == 1:
        return workers[0], f"uvicorn worker process {workers[0]} (child of {pid})"
    if workers:
        raise RuntimeError(f"{len(workers)} worker processes: run this check with one worker")
    others = f"; children: {descendants}" if descendants else " (no child processes)"
    return pid, f"`taskapi serve` process {pid}, uvicorn serving in-process{others}"


@dataclass
class Sampler:
    """Reads the server's VmRSS every 50 ms in a thread while a transfer runs."""

    pid: int
    samples: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.samples.append(rss_mib(self.pid))
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    @property
    def peak(self) -> float:
        return max(self.samples, default=0.0)


# --- the file, made up as it is sent ------------------------------------------------------------


def file_chunks(size: int) -> Iterator[bytes]:
    """`size` bytes, 1 MiB at a time: a PNG signature, then random bytes with the chunk's number
    stamped in, so a lost, repeated or reordered chunk changes the sha256."""
    block = bytearray(os.urandom(CHUNK))
    block[: len(PNG_SIGNATURE)] = PNG_SIGNATURE
    for number, offset in enumerate(range(0, size, CHUNK)):
        block[8:16] = number.to_bytes(8, "big")
        yield bytes(block[: min(CHUNK, size - offset)])


@dataclass
class Upload:
    filename: str
    size: int
    boundary: str = field(default_factory=lambda: "bigfile" + secrets.token_hex(16))
    digest: Any = field(default_factory=hashlib.sha256)

    @property
    def head(self) -> bytes:
        return (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{self.filename}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()

    @property
    def tail(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": f"multipart/form-data; boundary={self.boundary}",
            "Content-Length": str(len(self.head) + self.size + len(self.tail)),
        }

    async def body(self) -> AsyncIterator[bytes]:
        yield self.head
        for chunk in file_chunks(self.size):
            self.digest.update(chunk)
            yield chunk
        yield self.tail


async def upload(client: httpx.AsyncClient, task_id: int, size: int) -> tuple[dict[str, Any], str]:
    sent = Upload(filename=f"bigfile-{size // MIB}MiB.png", size=size)
    response = await client.post(
        f"/api/v1/tasks/{task_id}/files", content=sent.body(), headers=sent.headers
    )
    if response.status_code != 201:
        raise CheckFailed(f"upload: {response.status_code} {response.text[:500]}")
    created: dict[str, Any] = response.json()
    sha256 = sent.digest.hexdigest()
    if created["size"] != size or created["sha256"] != sha256:
        raise CheckFailed(
            f"upload: server stored {created['size']} bytes with sha256 {created['sha256']}, "
            f"sent {size} bytes with sha256 {sha256}"
        )
    return created, sha256


async def download(client: httpx.AsyncClient, file_id: int, size: int, sha256: str) -> None:
    digest, received = hashlib.sha256(), 0
    async with client.stream("GET", f"/api/v1/files/{file_id}") as response:
        if response.status_code != 200:
            await response.aread()
            raise CheckFailed(f"download: {response.status_code} {response.text[:500]}")
        if response.headers.get("content-length") != str(size):
            raise CheckFailed(f"download: Content-Length {response.headers.get('content-length')}")
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            received += len(chunk)
    if received != size or digest.hexdigest() != sha256:
        raise CheckFailed(
            f"download: got {received} bytes with sha256 {digest.hexdigest()}, "
            f"expected {size} with {sha256}"
        )


# --- processes: PostgreSQL database, moto, the server ----------------------------------------


class CheckFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def database_urls() -> tuple[str, str]:
    """(the app's DATABASE_URL for the scratch database, an asyncpg DSN for the server's
    `postgres` database), on the server DATABASE_URL names (default: local, user postgres)."""
    url = make_url(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    app = url.set(drivername="postgresql+asyncpg", database=DATABASE)
    admin = url.set(drivername="postgresql", database="postgres")
    return app.render_as_string(hide_password=False), admin.render_as_string(hide_password=False)


async def drop_database(admin_dsn: str) -> None:
    try:
        conn = await asyncpg.connect(admin_dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        raise CheckFailed(
            f"PostgreSQL is not reachable ({type(error).__name__}: {error}); start it "
            "(`make services`) or set DATABASE_URL to a running server."
        ) from error
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    finally:
        await conn.close()


def stop_process(process: subprocess.Popen[bytes], name: str, grace: float = 30.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        print(f"  {name} did not stop in {grace:.0f} s; killing it", flush=True)
        process.kill()
        process.wait()


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    | " + line for line in text[-lines:])


async def wait_http(url: str, process: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise CheckFailed(f"{name} exited with {process.returncode}:\n{log_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise CheckFailed(f"{name} did not answer {url} within 60 s:\n{log_tail(log)}")


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own venv's executables
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )


# --- one backend -----------------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    size_mib: float
    upload_s: float
    download_s: float
    rss_cold: float
    baseline: float
    peak_upload: float
    peak_download: float
    hwm: float | None
    measured: str

    @property
    def peak(self) -> float:
        return max(self.peak_upload, self.peak_download, self.hwm or 0.0)

    @property
    def growth(self) -> float:
        return self.peak - self.baseline

    @property
    def ok(self) -> bool:
        return self.growth < GROWTH_LIMIT_MIB


async def exercise(base_url: str, server_pid: int, backend: str, size: int) -> Result:
    timeout = httpx.Timeout(600, connect=10)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
        user = {"username": "bigfile", "email": "bigfile@example.com", "password": PASSWORD}
        response = await client.post("/api/v1/auth/register", json=user)
        if response.status_code != 201:
            raise CheckFailed(f"register: {response.status_code} {response.text[:300]}")
        response = await client.post(
            "/api/v1/auth/login", json={"username": "bigfile", "password": PASSWORD}
        )
        if response.status_code != 200:
            raise CheckFailed(f"login: {response.status_code} {response.text[:300]}")
        client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
        response = await client.post("/api/v1/tasks", json={"title": "Streaming check"})
        if response.status_code != 201:
            raise CheckFailed(f"create task: {response.status_code} {response.text[:300]}")
        task_id = response.json()["id"]

        pid, measured = serving_pid(server_pid)
        rss_cold = rss_mib(pid)
        warm = min(WARMUP_BYTES, size)
        created, sha256 = await upload(client, task_id, warm)
        await download(client, created["id"], warm, sha256)

        baseline = rss_mib(pid)
        hwm_reset = reset_hwm(pid)
        print(
            f"  measuring {measured}; RSS {rss_cold:.1f} MiB cold, {baseline:.1f} MiB after a "
            f"{warm / MIB:.0f} MiB warm-up",
            flush=True,
        )

        with Sampler(pid) as up:
            began = time.perf_counter()
            created, sha256 = await upload(client, task_id, size)
            upload_s = time.perf_counter() - began
        print(
            f"  upload   {size / MIB:.0f} MiB in {upload_s:.2f} s, sha256 {sha256[:16]}... ok, "
            f"peak RSS {up.peak:.1f} MiB ({len(up.samples)} samples)",
            flush=True,
        )
        with Sampler(pid) as down:
            began = time.perf_counter()
            await download(client, created["id"], size, sha256)
            download_s = time.perf_counter() - began
        print(
            f"  download {size / MIB:.0f} MiB in {download_s:.2f} s, size + sha256 ok, "
            f"peak RSS {down.peak:.1f} MiB ({len(down.samples)} samples)",
            flush=True,
        )
        hwm = hwm_mib(pid) if hwm_reset else None
        if hwm is not None:
            print(f"  VmHWM since the baseline: {hwm:.1f} MiB", flush=True)
    return Result(
        backend=backend,
        size_mib=size / MIB,
        upload_s=upload_s,
        download_s=download_s,
        rss_cold=rss_cold,
        baseline=baseline,
        peak_upload=up.peak,
        peak_download=down.peak,
        hwm=hwm,
        measured=measured,
    )


async def run_backend(backend: str, size: int, workdir: Path) -> Result:
    print(f"\n[{backend}] {size / MIB:.0f} MiB through taskapi serve", flush=True)
    app_url, admin_dsn = database_urls()
    scratch = workdir / backend
    scratch.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "S3_", "STORAGE_", "WEB_CONCURRENCY"))
    }
    env.update(
        DATABASE_URL=app_url,
        STORAGE_BACKEND=backend,
        STORAGE_DIR=str(scratch / "storage"),
        MAX_UPLOAD_BYTES=str(max(2048 * MIB, size + MIB)),
        RATE_LIMIT_ENABLED="false",
        WORKER_EMBEDDED="false",
        ENVIRONMENT="test",
        SECRET_KEY=secrets.token_urlsafe(36),  # 48 characters
        ACCESS_TOKEN_TTL_SECONDS="7200",  # a slow machine must not see the token expire
        LOG_LEVEL="WARNING",
        # Never real AWS credentials or config, whatever the shell has.
        AWS_CONFIG_FILE=str(scratch / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(scratch / "aws-credentials"),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    processes: list[tuple[subprocess.Popen[bytes], str]] = []
    await drop_database(admin_dsn)
    try:
        if backend == "s3":
            moto_port = free_port()
            moto_log = scratch / "moto.log"
            moto = start(
                [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)], env, moto_log
            )
            processes.append((moto, "moto"))
            moto_url = f"http://127.0.0.1:{moto_port}"
            await wait_http(f"{moto_url}/moto-api/", moto, "moto_server", moto_log)
            env.update(S3_ENDPOINT_URL=moto_url, S3_BUCKET="taskapi-bigfile", S3_REGION="us-east-1")

        log = scratch / "server.log"
        migrate = await asyncio.create_subprocess_exec(
            str(BIN / "taskapi"),
            "migrate",
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, _ = await migrate.communicate()
        if migrate.returncode != 0:
            tail = output.decode(errors="replace")[-3000:]
            raise CheckFailed(f"taskapi migrate failed:\n{tail}")
        port = free_port()
        server = start(
            [str(BIN / "taskapi"), "serve", "--port", str(port), "--workers", "1"], env, log
        )
        processes.append((server, "taskapi serve"))
        base_url = f"http://127.0.0.1:{port}"
        await wait_http(f"{base_url}/ops/health", server, "taskapi serve", log)
        try:
            return await exercise(base_url, server.pid, backend, size)
        except (CheckFailed, httpx.HTTPError) as error:
            raise CheckFailed(f"{error}\n  server log:\n{log_tail(log)}") from error
    finally:
        for process, name in reversed(processes):
            stop_process(process, name)
        with contextlib.suppress(CheckFailed, OSError, asyncpg.PostgresError):
            await drop_database(admin_dsn)


# --- report ----------------------------------------------------------------------------------


def report(results: list[Result]) -> None:
    header = (
        "backend",
        "size MiB",
        "upload s",
        "upload MiB/s",
        "download s",
        "download MiB/s",
        "baseline RSS MiB",
        "peak RSS MiB",
        "growth MiB",
        f"< {GROWTH_LIMIT_MIB} MiB",
    )
    rows = [header] + [
        (
            r.backend,
            f"{r.size_mib:.0f}",
            f"{r.upload_s:.2f}",
            f"{r.size_mib / r.upload_s:.1f}",
            f"{r.download_s:.2f}",
            f"{r.size_mib / r.download_s:.1f}",
            f"{r.baseline:.1f}",
            f"{r.peak:.1f}",
            f"{r.growth:+.1f}",
            "ok" if r.ok else "EXCEEDED",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print()
    for index, row in enumerate(rows):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    print(
        "\npeak RSS = the highest of the 50 ms VmRSS samples during both transfers and VmHWM "
        "(reset at the baseline);\ngrowth = peak - baseline (baseline: after a warm-up round trip)."
    )
    for r in results:
        print(
            f"{r.backend}: peak during upload {r.peak_upload:.1f}, during download "
            f"{r.peak_download:.1f}, VmHWM {'n/a' if r.hwm is None else f'{r.hwm:.1f}'}, "
            f"cold RSS {r.rss_cold:.1f} MiB (growth over cold: {r.peak - r.rss_cold:+.1f} MiB)"
        )


async def run(backends: list[str], size: int) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="taskapi-bigfile-"))
    results: list[Result] = []
    try:
        for backend in backends:
            results.append(await run_backend(backend, size, workdir))
    except CheckFailed as error:
        print(f"\nbigfile: FAILED: {error}", file=sys.stderr)
        if results:
            report(results)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results)
    return 0 if all(r.ok for r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--backend", choices=["local", "s3", "both"], default="both")
    args = parser.parse_args()
    if args.size_mib < 1:
        parser.error("--size-mib must be at least 1")
    if not Path("/proc/self/status").exists():
        print("bigfile: needs Linux /proc to read the server's memory", file=sys.stderr)
        return 2
    backends = ["local", "s3"] if args.backend == "both" else [args.backend]
    return asyncio.run(run(backends, args.size_mib * MIB))


if __name__ == "__main__":
    sys.exit(main())
