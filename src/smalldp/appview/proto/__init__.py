"""Generated protobuf classes of bsky.proto (``bsky_pb2``): regenerate with scripts/gen_proto.

``bsky_pb2.DESCRIPTOR.services_by_name["Service"]`` lists every method; a method's
message classes are ``google.protobuf.message_factory.GetMessageClass(m.input_type)`` (and
``m.output_type``), the same classes as ``bsky_pb2.<Name>``. tests/test_bsky_proto.py keeps this file equal to the
installed @atproto/bsky (conformance/node).
"""
