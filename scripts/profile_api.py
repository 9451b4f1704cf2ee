"""Where one `taskapi serve` worker spends its CPU on a request, by layer (issue 21).

    make profile [PROFILE_ARGS="--path /api/v1/tasks --size typical --seconds 20"]
    .venv/bin/python scripts/profile_api.py [--size typical|heavy] [--path PATH] [--seconds N]
        [--connections N] [--rate HZ] [--raw FILE] [--create]

On `make bench`'s seeded template (built afresh: 5 s), one `taskapi serve --workers 1` configured
as `make bench` runs it (production settings, JSON access log into a file, rate limits on) and,
beside it, the bench's ceiling app (scripts/bench/ceiling.py). wrk drives each in turn with the
same request as the user of the chosen size (`make bench`'s typical or heavy user) while py-spy
samples the server process (`py-spy record --nonblocking`: the server is never paused). Each
sample is given to one layer, the first of LAYERS (in that order) that one of its frames belongs
to, so a statement run inside a dependency counts as the query, a log record written inside the
middleware as logging. Printed per layer: its share of the samples and its CPU time per request
(that share of the server process's own CPU time, read from /proc, over the requests wrk
completed). The CPU time per request of both servers, measured the same way, is the comparison
that holds on a busy machine, where req/s does not.

`--create` profiles `make bench`'s create scenario instead (POST /tasks, its bodies); the
ceiling still answers the list, the yardstick `make bench` measures a create against.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import bench

# (layer, pattern matched against each frame: "function (package/module.py:line)"), in
# priority order.
LAYERS: tuple[tuple[str, str], ...] = (
    ("logging", r"\(logging/|taskapi/kit/logs|access_log|pythonjsonlogger"),
    ("auth and rate limit", r"\(taskapi/auth/|ratelimit|\(jwt/|\(redis/|principal"),
    ("query (SQLAlchemy, asyncpg)", r"\((sqlalchemy|asyncpg)/|\(taskapi/kit/db\.py"),
    (
        "serialization",
        r"serialize_response|jsonable_encoder|\(orjson|\(json/|dump_json|model_dump|"
        r"render \(|taskapi/kit/responses|list_page\.py",
    ),
    (
        "dependency solving and parameters",
        r"\(fastapi/dependencies/|solve_dependencies|list_params|strict_query|\(pydantic",
    ),
    ("handler and service", r"\(taskapi/(tasks|projects|events|users)/"),
    (
        "middleware",
        r"\(taskapi/kit/|\(starlette/middleware/|\(fastapi/(telemetry|_body)|prometheus",
    ),
    ("routing (Starlette, FastAPI)", r"\((starlette|fastapi|anyio)/|\(contextlib"),
    ("server (uvicorn, event loop)", r"\((uvicorn|asyncio|uvloop|httptools|h11)/"),
)
OTHER = "other (no Python frame: the loop's C code, GC; or frames of no layer)"


@dataclass(frozen=True)
class Run:
    requests: int
    cpu_seconds: float
    samples: Counter[str]  # layer -> samples (empty without py-spy)
    total_samples: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def layer_of(stack: Sequence[str]) -> str:
    for layer, pattern in _COMPILED:
        if any(pattern.search(frame) for frame in stack):
            return layer
    return OTHER


_COMPILED = [(layer, re.compile(pattern)) for layer, pattern in LAYERS]


def read_raw(path: Path) -> tuple[Counter[str], int]:
    """py-spy's raw output: one line per distinct stack, frames joined by ';', then a count."""
    layers: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        layers[layer_of(stack.split(";")) if stack else OTHER] += int(count)
        total += int(count)
    return layers, total


def measure(
    wrk: bench.Wrk,
    server: bench.Server,
    headers: dict[str, str],
    workload: bench.Workload,
    options: argparse.Namespace,
    raw: Path | None,
) -> Run:
    wrk.run(server.url, headers, workload, options.connections, 2)  # warm-up
    pid = server.pid
    spy = None
    if raw is not None:
        spy = subprocess.Popen(  # noqa: S603 - py-spy from our own venv
            [str(bench.BIN / "py-spy"), "record", "--nonblocking", "--gil", "--format", "raw",
             "--rate", str(options.rate), "--pid", str(pid), "--output", str(raw),
             "--duration", str(options.seconds + 1)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)  # attached before the load starts
    before = cpu_seconds(pid)
    result = wrk.run(server.url, headers, workload, options.connections, options.seconds)
    used = cpu_seconds(pid) - before
    layers: Counter[str] = Counter()
    total = 0
    if spy is not None and raw is not None:
        spy.wait(60)
        layers, total = read_raw(raw)
    if result.error_count:
        raise bench.BenchError(f"{result.describe_errors()} errors while profiling")
    return Run(result.requests, used, layers, total)


def report(api: Run, ceiling: Run, options: argparse.Namespace, request: str) -> str:
    api_us = api.cpu_seconds / api.requests * 1e6
    ceiling_us = ceiling.cpu_seconds / ceiling.requests * 1e6
    settings = f" with {', '.join(options.env)}" if options.env else ""
    lines = [
        f"{request}{settings} as make bench's {options.size} user, "
        f"{options.connections} connections, {options.seconds} s, py-spy at {options.rate} Hz "
        f"({api.total_samples:,} samples)",
        "",
        "| layer | share of samples | CPU µs per request |",
        "|---|---:|---:|",
    ]
    for layer in [name for name, _ in LAYERS] + [OTHER]:
        share = api.samples[layer] / api.total_samples if api.total_samples else 0.0
        lines.append(f"| {layer} | {share:.1%} | {share * api_us:,.0f} |")
    lines += [
        f"| **API process, all** | 100% | **{api_us:,.0f}** |",
        f"| ceiling process (Starlette + asyncpg + orjson), all |  | {ceiling_us:,.0f} |",
        "",
        f"API {api.requests / options.seconds:,.0f} req/s, ceiling "
        f"{ceiling.requests / options.seconds:,.0f} req/s in this run; CPU per request "
        f"ceiling/API = {ceiling_us / api_us:.2f} (what the req/s ratio tends to on an idle "
        "machine where the server process is the bottleneck).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(bench.SIZES), default="typical")
    parser.add_argument("--path", default=f"{bench.API}/tasks")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw stacks here")
    parser.add_argument(
        "--create", action="store_true", help="profile make bench's creates (POST /tasks)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the API server for this run (repeatable), e.g. LOG_LEVEL=WARNING "
        "to measure what the access log costs",
    )
    options = parser.parse_args(argv)
    size = bench.SIZES[options.size]
    workdir = Path(tempfile.mkdtemp(prefix="taskapi-profile-"))
    raw = options.raw or workdir / "api.raw"
    try:
        wrk = bench.Wrk(bench.ensure_wrk(), workdir)
        bench.build_template(bench.server_env(1, "", workdir / "storage"))
        env = bench.server_env(1, bench.clone_database(), workdir / "storage")
        api_env = {**env, **dict(item.split("=", 1) for item in options.env)}
        with (
            bench.api_server("taskapi serve", api_env, 1, workdir / "api.log") as api,
            bench.ceiling_server(size.ceiling_env(env), 1, workdir / "ceiling.log") as ceiling,
        ):
            api.start("/ops/ready")
            headers = {"Authorization": f"Bearer {bench.login(api.url, size.user)}"}
            ceiling.start(options.path, headers=headers)
            listing = bench.Workload.cycle([bench.Req("GET", options.path)])
            ceiling_run = measure(wrk, ceiling, headers, listing, options, None)
            request, api_workload = f"GET {options.path}", listing
            if options.create:
                headers = {**headers, "Content-Type": "application/json"}
                request = f"POST {bench.API}/tasks"
                api_workload = bench.Workload.cycle(bench.create_requests())
            api_run = measure(wrk, api, headers, api_workload, options, raw)
    except bench.BenchError as error:
        print(f"profile: {error}", file=sys.stderr)
        return 1
    finally:
        bench.drop_databases()
    print(report(api_run, ceiling_run, options, request))
    return 0


if __name__ == "__main__":
    sys.exit(main())
