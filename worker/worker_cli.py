"""``statecast worker``: settings from the environment, health server, the loop, signals.

SIGTERM (or a first SIGINT) stops fetching; the batch in flight finishes (publish, state
write, commit) within ``STATECAST_DRAIN_TIMEOUT_S``, then the consumer leaves the group. A
batch still running at the deadline is abandoned uncommitted (it is redelivered and the
offset fence keeps state exactly-once). A second SIGINT exits at once.

Exit codes: 0 stopped cleanly, 1 drain deadline missed or unexpected error, 2 bad
configuration or models, 3 a dependency stayed unavailable past its deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from statecast.worker.backoff import DependencyTimeout
from statecast.worker.health import HealthServer
from statecast.worker.served import ModelLoadError
from statecast.worker.settings import Settings, SettingsError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_DEPENDENCY = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Configured by STATECAST_* environment variables; see docs/configuration.md."
    parser.add_argument("--routes", help="override STATECAST_ROUTES")
    parser.add_argument("--http-port", type=int, help="override STATECAST_HTTP_PORT")
    parser.add_argument(
        "--max-records", type=int, default=None, help="stop after this many records (bounded run)"
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="stop after this many seconds without records (bounded run)",
    )


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.routes:
        env["STATECAST_ROUTES"] = args.routes
    if args.http_port is not None:
        env["STATECAST_HTTP_PORT"] = str(args.http_port)
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    log.info("settings: %s", settings.describe())
    if settings.crash_at is not None:
        log.warning("test-only fault injection armed: %s", settings.crash_at)
    return asyncio.run(serve(settings, args.max_records, args.idle_timeout))


async def serve(
    settings: Settings, max_records: int | None = None, idle_timeout_s: float | None = None
) -> int:
    # Imported here so `statecast worker --help` does not load onnxruntime.
    from statecast.worker.loop import Worker

    worker = Worker(settings)
    health = HealthServer(worker.metrics.registry, worker.readiness)
    await health.start(settings.http_host, settings.http_port)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_signal(signame: str) -> None:
        if stopping.is_set() and signame == "SIGINT":
            log.error("second SIGINT: exiting at once")
            os._exit(130)
        log.info("%s: stop fetching, draining (budget %.0fs)", signame, settings.drain_timeout_s)
        stopping.set()
        worker.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    task = asyncio.create_task(worker.run(max_records, idle_timeout_s))
    stop_wait = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=settings.drain_timeout_s)
            if not done:
                log.error("drain budget of %.0fs exceeded: abandoning", settings.drain_timeout_s)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return EXIT_ERROR
        stats = task.result()
        log.info(
            "stopped: %d records, %d predictions, %d dead letters, %d replays skipped",
            stats.records,
            stats.predictions,
            stats.dead_letters,
            stats.replays,
        )
        return EXIT_OK
    except ModelLoadError as exc:
        log.error("cannot serve: %s", exc)
        return EXIT_CONFIG
    except DependencyTimeout as exc:
        log.error("giving up: %s", exc)
        return EXIT_DEPENDENCY
    finally:
        stop_wait.cancel()
        await asyncio.gather(stop_wait, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await health.stop()
