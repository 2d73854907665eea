"""Relays a gRPC call to the replica that owns its instance, and the owner's answer back.

The request goes out as the same message (serialized again: protobuf keeps unknown fields) with
the caller's metadata, its token included, minus what belongs to one hop (``grpc-*`` keys,
pseudo-headers, ``user-agent``...), plus ``MARKER``; its timeout is what is left of the caller's
deadline, so the owner gives up when the caller does. Responses come back as bytes and are sent
on as they are, message by message as they arrive, so a forwarded call's messages are the
owner's byte for byte; so are its status, details and trailing metadata (``Relayed``), the
``grpc-status-details-bin`` rich status among them. The caller cancelling cancels the owner's
call: the handler's task is cancelled and the call is cancelled on the way out.

What the owner did not send, it cannot have meant: a call that ends UNAVAILABLE, CANCELLED or
INTERNAL without a rich status was ended by the channel (the owner could not be dialed, or its
connection dropped mid-call: it stopped or died), and ends with the catalogue's
OWNER_UNREACHABLE. Every status the gateway itself sends carries a rich status, so an owner's own
UNAVAILABLE (INSTANCE_UNOWNED, JOURNAL_UNAVAILABLE...) is relayed as it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from service import errors
from service.cluster.forwarding.marker import MARKER
from service.cluster.ownership import Peer
from service.errors import GatewayError, shown
from service.gateway import Forward
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb

log = logging.getLogger(__name__)

Context = aio.ServicerContext[Any, Any]
MetadataPairs = tuple[tuple[str, str | bytes], ...]

#: Metadata that describes one hop, never relayed (``grpc-*`` keys and pseudo-headers neither).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-type",
        "user-agent",
        MARKER,
    }
)
STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: Codes a channel ends a call with on its own when the peer cannot be reached or goes away.
_CHANNEL_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL}
)
LIST_METHOD = "/wagateway.privacy.v1.InstanceService/ListInstances"
#: The one stream that never ends on its own: ended cleanly at shutdown (``end_watches``).
WATCH_METHOD = "/wagateway.privacy.v1.PrivacyService/WatchPrivacySettings"


class Relayed(Exception):
    """The owner's own answer to a forwarded call, to be ended with exactly as it came.

    Not a ``GatewayError``: the status was built by the owner from the catalogue already; the
    edge aborts with its code, details and trailing metadata untouched.
    """

    def __init__(
        self, code: grpc.StatusCode, details: str | None, trailing_metadata: MetadataPairs
    ) -> None:
        super().__init__(code.name)
        self.code = code
        self.details = details or ""
        self.trailing_metadata = trailing_metadata

    @property
    def reason(self) -> str | None:
        """The catalogue reason in the rich status, for this replica's own log line."""
        for key, value in self.trailing_metadata:
            if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
                info = error_details_pb2.ErrorInfo()
                for detail in status.details:
                    if detail.Unpack(info):
                        return shown(info.reason)
        return None


class GrpcForwarder:
    """Forwards calls to their owners over one cached channel per peer.

    ``credentials``: TLS for the peers' gRPC ports (None: plaintext, for replicas on a private
    network). ``close`` closes every channel (once the server has stopped).
    """

    def __init__(
        self,
        replica_id: str,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        *,
        mark: str | None = None,
    ) -> None:
        """``mark``: what the calls it forwards carry as ``MARKER`` (the replica's signed mark,
        ``Marks.mine``; unset: its id, which vouches for nothing)."""
        self.replica_id = replica_id
        self._mark = mark or replica_id
        self._credentials = credentials
        self._options = tuple(options)
        self._channels: dict[str, aio.Channel] = {}
        self._unary: dict[tuple[str, str], aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}
        self._stream: dict[tuple[str, str], aio.UnaryStreamMultiCallable[bytes, bytes]] = {}
        self._watches: set[aio.UnaryStreamCall[bytes, bytes]] = set()
        self._ended: set[aio.UnaryStreamCall[bytes, bytes]] = set()

    def channel(self, peer: Peer) -> aio.Channel:
        """The channel to ``peer``'s gRPC port, dialed once and kept (grpc redials by itself)."""
        address = peer.grpc_address
        channel = self._channels.get(address)
        if channel is None:
            if self._credentials is None:
                channel = aio.insecure_channel(address, options=self._options)
            else:
                channel = aio.secure_channel(address, self._credentials, options=self._options)
            self._channels[address] = channel
        return channel

    def metadata(self, context: Context) -> MetadataPairs:
        """The caller's metadata as it goes to the owner: end-to-end keys only, and the mark."""
        kept = tuple(
            (key, value)
            for key, value in context.invocation_metadata() or ()
            if key not in HOP_BY_HOP and not key.startswith(("grpc-", ":"))
        )
        return (*kept, (MARKER, self._mark))

    async def unary(
        self, forward: Forward, method: str, request: Message, context: Context
    ) -> bytes:
        """The owner's response to ``request``, serialized; raises ``Relayed`` or
        OWNER_UNREACHABLE for a call that did not end OK."""
        key = (forward.peer.grpc_address, method)
        multicallable = self._unary.get(key)
        if multicallable is None:
            multicallable = self.channel(forward.peer).unary_unary(method)
            self._unary[key] = multicallable
        call = multicallable(
            request.SerializeToString(),
            timeout=context.time_remaining(),
            metadata=self.metadata(context),
        )
        try:
            response = await call
            _relay_trailing(context, await call.trailing_metadata())
            return response
        except aio.AioRpcError as error:
            raise _failure(error, forward) from None
        finally:
            if not call.done():
                call.cancel()

    async def stream(
        self, forward: Forward, method: str, request: Message, context: Context
    ) -> AsyncIterator[bytes]:
        """The owner's responses, serialized, each as soon as it arrives; ends as ``unary``."""
        key = (forward.peer.grpc_address, method)
        multicallable = self._stream.get(key)
        if multicallable is None:
            multicallable = self.channel(forward.peer).unary_stream(method)
            self._stream[key] = multicallable
        call = multicallable(
            request.SerializeToString(),
            timeout=context.time_remaining(),
            metadata=self.metadata(context),
        )
        watch = method == WATCH_METHOD
        if watch:
            self._watches.add(call)
        try:
            async for response in call:
                yield response
            _relay_trailing(context, await call.trailing_metadata())
        except asyncio.CancelledError:
            # A call cancelled by ``end_watches`` reads as cancelled: this replica is stopping,
            # and the watch ends cleanly, as a local one does. Anything else is the caller's.
            if call not in self._ended:
                raise
        except aio.AioRpcError as error:
            if call not in self._ended:
                raise _failure(error, forward) from None
        finally:
            if watch:
                self._watches.discard(call)
                self._ended.discard(call)
            if not call.done():
                call.cancel()

    async def list_instances(
        self, peer: Peer, context: Context, seconds: float
    ) -> instance_pb.ListInstancesResponse | None:
        """``peer``'s own view of the instances the caller may see; None if it did not answer
        within ``seconds`` (or refused: the caller's view then comes from here)."""
        multicallable = self.channel(peer).unary_unary(
            LIST_METHOD,
            request_serializer=instance_pb.ListInstancesRequest.SerializeToString,
            response_deserializer=instance_pb.ListInstancesResponse.FromString,
        )
        try:
            response: instance_pb.ListInstancesResponse = await multicallable(
                instance_pb.ListInstancesRequest(),
                timeout=seconds,
                metadata=self.metadata(context),
            )
        except aio.AioRpcError as error:
            log.info(
                "replica %s did not list its instances: %s", peer.replica_id, error.code().name
            )
            return None
        return response

    def end_watches(self) -> None:
        """Ends every forwarded watch stream cleanly (this replica is shutting down), as
        ``Gateway.end_watches`` ends the local ones, rather than holding shutdown for its grace."""
        for call in self._watches:
            self._ended.add(call)
            call.cancel()

    async def close(self) -> None:
        """Closes every channel; calls still on them end CANCELLED."""
        channels, self._channels = list(self._channels.values()), {}
        self._unary.clear()
        self._stream.clear()
        for channel in channels:
            await channel.close()


def _relay_trailing(context: Context, trailing: aio.Metadata | None) -> None:
    if trailing:
        context.set_trailing_metadata(tuple(trailing))


def _failure(error: aio.AioRpcError, forward: Forward) -> Relayed | GatewayError:
    """What the caller is told of a forwarded call that did not end OK (see the module's doc)."""
    trailing: MetadataPairs = tuple(error.trailing_metadata() or ())
    code = error.code()
    if code in _CHANNEL_CODES and not any(key == STATUS_DETAILS_KEY for key, _ in trailing):
        log.warning(
            "replica %s, owner of %s, could not be reached: %s",
            forward.peer.replica_id,
            forward.instance,
            code.name,
        )
        return errors.OWNER_UNREACHABLE.error(
            instance=forward.instance,
            replica=forward.peer.replica_id,
            detail="the connection to it failed or was lost",
        )
    return Relayed(code, error.details(), trailing)
