"""bsky_pb2 (src/smalldp/appview/proto) says what the pinned @atproto/bsky says: drift caught.

The package's shipped generated code (dist/proto/bsky_pb.js, bsky_connect.js) is read by
node (conformance/node/bsky_descriptors.cjs): every method of bsky.Service with its input and
output, every message the service reaches with its fields (name, number, type, repeated,
proto3 `optional`, map key and value, oneof), every enum with its values. The same facts are
taken from bsky_pb2.DESCRIPTOR, and both must be equal, for the whole service.

When they differ after a version bump of conformance/node/package.json:
`scripts/gen_proto --from-npm` rewrites bsky.proto from the package and regenerates bsky_pb2.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from bsky_node import ROOT, bsky_version, run_node_json
from smalldp.appview.proto import bsky_pb2

PROTO_DIR = ROOT / "src" / "smalldp" / "appview" / "proto"

_SCALARS = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64: "fixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32: "fixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED32: "sfixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64: "sfixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32: "sint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT64: "sint64",
}


def _file_protos(fd) -> list[descriptor_pb2.FileDescriptorProto]:
    """bsky.proto's FileDescriptorProto and those of the files it imports (timestamp.proto)."""
    out, todo, seen = [], [fd], set()
    while todo:
        f = todo.pop()
        if f.name in seen:
            continue
        seen.add(f.name)
        p = descriptor_pb2.FileDescriptorProto()
        f.CopyToProto(p)
        out.append(p)
        todo.extend(f.dependencies)
    return out


def pb2_facts() -> dict:
    """The facts of bsky_pb2.DESCRIPTOR in the shape bsky_descriptors.cjs prints."""
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}

    def collect(prefix: str, msgs, ens) -> None:
        for e in ens:
            enums[f"{prefix}{e.name}"] = e
        for m in msgs:
            messages[f"{prefix}{m.name}"] = m
            collect(f"{prefix}{m.name}.", m.nested_type, m.enum_type)

    files = _file_protos(bsky_pb2.DESCRIPTOR)
    for f in files:
        collect(f"{f.package}." if f.package else "", f.message_type, f.enum_type)

    def field_facts(m: descriptor_pb2.DescriptorProto, fld: descriptor_pb2.FieldDescriptorProto) -> dict:
        T = descriptor_pb2.FieldDescriptorProto
        repeated = fld.label == T.LABEL_REPEATED
        out: dict = {"name": fld.name, "number": fld.number, "repeated": repeated,
                     "optional": fld.proto3_optional}
        if fld.type in _SCALARS:
            out["type"] = _SCALARS[fld.type]
        else:
            ref = fld.type_name.lstrip(".")
            entry = messages.get(ref)
            if fld.type == T.TYPE_MESSAGE and entry is not None and entry.options.map_entry:
                key, value = sorted(entry.field, key=lambda f: f.number)
                out.update(type="map", repeated=False,
                           map={"key": _SCALARS[key.type],
                                "value": _SCALARS.get(value.type) or value.type_name.lstrip(".")})
            else:
                out["type"] = ref
        real_oneof = fld.HasField("oneof_index") and not fld.proto3_optional
        out["oneof"] = m.oneof_decl[fld.oneof_index].name if real_oneof else None
        return out

    # every message the service reaches, and every message and enum bsky.proto defines
    reached: dict[str, list[dict]] = {}

    def visit(name: str) -> None:
        if name in reached or name not in messages:
            return
        m = messages[name]
        if m.options.map_entry:
            return
        reached[name] = [field_facts(m, f) for f in m.field]
        for f in reached[name]:
            visit(f["map"]["value"] if f["type"] == "map" else f["type"])

    bsky_file = files[0]
    assert bsky_file.name == "bsky.proto" and bsky_file.package == "bsky"
    (service,) = bsky_file.service
    methods = []
    for meth in service.method:
        kind = {(False, False): "unary", (False, True): "server_streaming",
                (True, False): "client_streaming", (True, True): "bidi_streaming"}[
            (meth.client_streaming, meth.server_streaming)]
        methods.append({"name": meth.name, "input": meth.input_type.lstrip("."),
                        "output": meth.output_type.lstrip("."), "kind": kind})
        visit(meth.input_type.lstrip("."))
        visit(meth.output_type.lstrip("."))
    for m in bsky_file.message_type:
        visit(f"bsky.{m.name}")
    return {
        "service": f"{bsky_file.package}.{service.name}",
        "methods": methods,
        "messages": reached,
        "enums": {name: [{"name": v.name, "number": v.number} for v in e.value]
                  for name, e in enums.items() if name.startswith("bsky.")},
    }


def differences(npm: dict, ours: dict) -> list[str]:
    """Readable differences, the package's side first."""
    out: list[str] = []
    if npm["service"] != ours["service"]:
        out.append(f"service: package {npm['service']}, bsky_pb2 {ours['service']}")
    ours_methods = {m["name"]: m for m in ours["methods"]}
    npm_methods = {m["name"]: m for m in npm["methods"]}
    for name in npm_methods.keys() - ours_methods.keys():
        out.append(f"method {name}: in the package, not in bsky_pb2")
    for name in ours_methods.keys() - npm_methods.keys():
        out.append(f"method {name}: in bsky_pb2, not in the package")
    for name in npm_methods.keys() & ours_methods.keys():
        if npm_methods[name] != ours_methods[name]:
            out.append(f"method {name}: package {npm_methods[name]}, bsky_pb2 {ours_methods[name]}")
    if not out and [m["name"] for m in npm["methods"]] != [m["name"] for m in ours["methods"]]:
        out.append("methods: same set, different order")
    for kind in ("messages", "enums"):
        a, b = npm[kind], ours[kind]
        for name in sorted(a.keys() - b.keys()):
            out.append(f"{kind[:-1]} {name}: in the package, not in bsky_pb2")
        for name in sorted(b.keys() - a.keys()):
            out.append(f"{kind[:-1]} {name}: in bsky_pb2, not in the package")
        for name in sorted(a.keys() & b.keys()):
            fa = {f["number"]: f for f in a[name]}
            fb = {f["number"]: f for f in b[name]}
            for no in sorted(fa.keys() | fb.keys()):
                if fa.get(no) != fb.get(no):
                    out.append(f"{name} #{no}: package {fa.get(no)}, bsky_pb2 {fb.get(no)}")
    return out


@pytest.fixture(scope="module")
def npm_facts() -> dict:
    facts = run_node_json("bsky_descriptors.cjs")
    assert isinstance(facts, dict)
    return facts


def test_bsky_pb2_equals_the_installed_package(npm_facts: dict) -> None:
    diff = differences(npm_facts, pb2_facts())
    assert diff == [], (
        f"bsky_pb2 and @atproto/bsky {bsky_version()} disagree ({len(diff)} differences; "
        "after a version bump: scripts/gen_proto --from-npm):\n  " + "\n  ".join(diff[:50]))


def test_the_comparison_covers_the_whole_service(npm_facts: dict) -> None:
    """Not vacuous: the whole service, with the shapes the comparison must see."""
    ours = pb2_facts()
    assert ours["service"] == "bsky.Service"
    names = {m["name"] for m in ours["methods"]}
    assert len(names) == len(ours["methods"]) >= 100
    assert {"GetLatestRev", "GetActors", "GetTimeline", "GetThread", "GetIdentityByDid"} <= names
    assert len(ours["messages"]) >= 2 * len(names)
    fields = [f for fs in ours["messages"].values() for f in fs]
    assert any(f["type"] == "map" for f in fields)
    assert any(f["optional"] for f in fields)
    assert any(f["repeated"] for f in fields)
    assert any(f["type"] == "google.protobuf.Timestamp" for f in fields)
    assert any(f["type"] in ours["enums"] for f in fields)
    assert "google.protobuf.Timestamp" in npm_facts["messages"]


def test_a_wrong_field_number_is_caught(npm_facts: dict) -> None:
    """The comparison sees numbers, names and types (a mutated copy of our facts)."""
    import copy
    ours = pb2_facts()
    bad = copy.deepcopy(ours)
    bad["messages"]["bsky.GetLatestRevResponse"][0]["number"] += 1
    assert any("GetLatestRevResponse" in d for d in differences(npm_facts, bad))
    bad = copy.deepcopy(ours)
    bad["messages"]["bsky.ActorInfo"][1]["type"] = "bytes"
    assert any("ActorInfo" in d for d in differences(npm_facts, bad))
    bad = copy.deepcopy(ours)
    bad["methods"][0]["output"] = "bsky.Record"
    assert differences(npm_facts, bad)


def test_bsky_pb2_is_generated_from_bsky_proto(tmp_path: Path) -> None:
    """bsky_pb2.py is what scripts/gen_proto makes of bsky.proto today (needs grpcio-tools:
    the `proto` extra, a dev-time tool, so this one check skips without it)."""
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools not installed (pip install -e '.[proto]'): bsky_pb2.py "
                    "not regenerated to compare")
    import grpc_tools
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    proc = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{wkt}",
                           f"--python_out={tmp_path}", "bsky.proto"],
                          capture_output=True, text=True, cwd=PROTO_DIR)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "bsky_pb2.py").read_bytes() == (PROTO_DIR / "bsky_pb2.py").read_bytes(), \
        "bsky_pb2.py is stale: run scripts/gen_proto"
