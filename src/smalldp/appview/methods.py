"""bsky.Service's methods and their message classes, read from the generated descriptor.

Its own module (no grpc import) so that the RPC worker processes (``workers.py``) decode
and encode messages without loading the gRPC server.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import message_factory
from google.protobuf.message import Message

from smalldp.appview.proto import bsky_pb2

SERVICE = "bsky.Service"


@dataclass(frozen=True)
class Method:
    """One method of bsky.Service and its message classes."""

    name: str
    request: type[Message]
    response: type[Message]


def _methods() -> dict[str, Method]:
    service = bsky_pb2.DESCRIPTOR.services_by_name["Service"]
    return {m.name: Method(m.name, message_factory.GetMessageClass(m.input_type),
                           message_factory.GetMessageClass(m.output_type))
            for m in service.methods}


METHODS: dict[str, Method] = _methods()
