"""The HTTP side: XRPC and Constellation-compatible routes over read-only connections."""

NAMESPACE = "dev.smalldp"  # the one namespace of smalldp's own XRPC methods and lexicons
