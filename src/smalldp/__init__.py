"""smalldp: a small ATProto DataPlane."""
__version__ = "0.1.0"
