"""bsky.Service, the official AppView's DataPlane interface, served by smalldp (issue 15).

Phase 1 holds the interface only: ``smalldp.appview.proto.bsky_pb2`` (message classes
generated from ``proto/bsky.proto`` by ``scripts/gen_proto``). README-dev.md here says where
everything is, what was measured and which RPC needs what.
"""
