"""A grpc.aio server answering one method of bsky.Service, for tests/test_grpc_spike.py.

    python grpc_spike_server.py            serve on 127.0.0.1, a free port

Prints ``{"port": N}`` on one line once it listens, then serves until stdin closes (the
test's end of the pipe), so it never outlives the test. Its own process, so that the CPU it
uses per call is measured apart from the client's.

What it shows: bsky.Service needs no generated ``*_grpc.py`` stubs. A generic handler maps
method names to handlers with the message classes' FromString / SerializeToString. Every
method of the service is in the map, read from ``bsky_pb2.DESCRIPTOR``: the one implemented
here answers, the others abort with ``UNIMPLEMENTED`` naming the method; a name that is not
in bsky.Service at all gets grpc's own ``UNIMPLEMENTED`` ("Method not found!").
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from smalldp.appview.proto import bsky_pb2  # noqa: E402


async def get_latest_rev(request: bsky_pb2.GetLatestRevRequest,
                         context: grpc.aio.ServicerContext) -> bsky_pb2.GetLatestRevResponse:
    # proves the request was decoded: an empty DID is a client error, a DID echoes back
    if not request.actor_did:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "actor_did: missing")
    return bsky_pb2.GetLatestRevResponse(rev=f"rev-of:{request.actor_did}")


IMPLEMENTED = {"GetLatestRev": get_latest_rev}


def _unimplemented(name: str):
    async def answer(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"bsky.Service/{name}: not implemented")
    return answer


def _decoding(name: str, req_class, impl):
    """The request decoded here, not by grpc: with ``request_deserializer=req.FromString`` a
    corrupt message reaches the client as UNKNOWN ("Unexpected <class DecodeError>..."), and
    bad input must be INVALID_ARGUMENT."""
    async def answer(raw: bytes, context: grpc.aio.ServicerContext):
        try:
            request = req_class.FromString(raw)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"bsky.Service/{name}: not a valid {req_class.DESCRIPTOR.full_name}")
        return await impl(request, context)
    return answer


def handler() -> grpc.GenericRpcHandler:
    methods = {}
    for m in bsky_pb2.DESCRIPTOR.services_by_name["Service"].methods:
        req = message_factory.GetMessageClass(m.input_type)
        resp = message_factory.GetMessageClass(m.output_type)
        methods[m.name] = grpc.unary_unary_rpc_method_handler(
            _decoding(m.name, req, IMPLEMENTED.get(m.name) or _unimplemented(m.name)),
            request_deserializer=None,  # bytes: _decoding parses them
            response_serializer=resp.SerializeToString)
    return grpc.method_handlers_generic_handler("bsky.Service", methods)


async def main() -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the test closes stdin
    await server.stop(grace=0.5)


if __name__ == "__main__":
    asyncio.run(main())
