"""The overhead baseline: a bare grpc.aio server, as a process of its own.

It serves ``PrivacyService`` from the gateway's own generated stubs with nothing behind it: no
interceptor, no engine, no session, no journal. ``StreamUpdatePrivacySettings`` yields messages
built once at start, the very messages a real gateway sent for a seven-field update (captured by
``benchmarks.client``'s ``capture`` mode), so each call carries the same count and sizes;
``GetPrivacySettings`` returns a captured response.

``python -m benchmarks.bare_server CAPTURE.json [HOST:PORT]`` prints
``bare: gRPC listening on HOST:PORT`` and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from grpc import aio

from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc

Context = aio.ServicerContext[Any, Any]


class BareServicer(pb_grpc.PrivacyServiceServicer):
    """Answers with pre-built messages, whatever the request."""

    def __init__(
        self,
        stream: Sequence[pb.StreamUpdatePrivacySettingsResponse],
        get: pb.GetPrivacySettingsResponse,
    ) -> None:
        self._stream = tuple(stream)
        self._get = get

    async def StreamUpdatePrivacySettings(
        self, request: pb.StreamUpdatePrivacySettingsRequest, context: Context
    ) -> AsyncIterator[pb.StreamUpdatePrivacySettingsResponse]:
        for message in self._stream:
            yield message

    async def GetPrivacySettings(
        self, request: pb.GetPrivacySettingsRequest, context: Context
    ) -> pb.GetPrivacySettingsResponse:
        return self._get


def load_capture(path: Path) -> BareServicer:
    """The servicer answering with the messages captured in ``path``."""
    captured = json.loads(path.read_text())
    stream = [
        pb.StreamUpdatePrivacySettingsResponse.FromString(base64.b64decode(m))
        for m in captured["stream"]
    ]
    get = pb.GetPrivacySettingsResponse.FromString(base64.b64decode(captured["get"]))
    # The other methods stay unimplemented (UNIMPLEMENTED), which the typed stubs call abstract.
    return BareServicer(stream, get)  # type: ignore[abstract]


async def serve(servicer: BareServicer, address: str) -> None:
    """Serves ``servicer`` on ``address`` until SIGTERM or SIGINT."""
    server = aio.server()
    pb_grpc.add_PrivacyServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    await server.start()
    print(f"bare: gRPC listening on {address.rsplit(':', 1)[0]}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    address = args[1] if len(args) > 1 else "127.0.0.1:0"
    asyncio.run(serve(load_capture(Path(args[0])), address))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
