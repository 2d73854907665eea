"""``python -m service.sessions.simulator --listen 127.0.0.1:PORT``: the simulator on its own.

Replicas of the gateway run as separate processes, so the WhatsApp they share has to be one too.
It prints one line, ``simulator listening on HOST:PORT`` (the bound port when 0 was asked for),
once it accepts connections, and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from service.sessions.simulator.server import SimulatorServer

#: The line printed once the simulator accepts connections; the address follows it.
LISTENING_PREFIX = "simulator listening on "


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service.sessions.simulator",
        description="A simulated WhatsApp for gateway replicas, on a loopback port.",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (default 127.0.0.1:0)"
    )
    parser.add_argument(
        "--latency-ms", type=int, default=0, help="every stanza's round trip (default 0)"
    )
    return parser.parse_args(argv)


async def _serve(host: str, port: int, latency: float) -> None:
    async with SimulatorServer(host, port, latency=latency) as server:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print(f"{LISTENING_PREFIX}{server.address}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    arguments = _arguments(argv)
    host, _, port = str(arguments.listen).rpartition(":")
    if not host or not port.isdigit():
        print(f"--listen: {arguments.listen!r} is not HOST:PORT", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(host.strip("[]"), int(port), arguments.latency_ms / 1000))
    except OSError as exc:
        print(f"cannot listen on {arguments.listen}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
