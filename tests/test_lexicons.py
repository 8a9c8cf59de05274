"""The lexicons in lexicons/dev/smalldp: well-formed, in step with DATAPLANE.md, and with the server.

The static half reads the JSON documents (lexicon syntax, ids, refs, the DataPlane
conventions) and compares their parameter and output names with the signatures in
DATAPLANE.md.  The live half runs the real application from ``make_app`` over a real
SQLite file (written by the real Writer) on 127.0.0.1 and derives every request from
the lexicons: each ``dev.smalldp.*`` route has a lexicon and each lexicon a route,
array parameters take 100 values and refuse 101, integers refuse their range's
neighbours, required parameters are required, DID / at-uri / handle syntax is checked,
and 200 answers match the output schema.  So the lexicons and the server cannot
disagree silently.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import yarl

from smalldp.api import NAMESPACE
from smalldp.api.readers import READERS
from smalldp.api.server import make_app
from smalldp.record_bodies import DEFAULT_BODY_COLLECTIONS
from smalldp.store.writer import Writer

from helpers_server import (
    FOLLOW,
    LIKE,
    LIST,
    LISTITEM,
    POST,
    Events,
    Reply,
    ServerThread,
    apply,
    at_uri,
    did,
    tid,
)

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
LEXICON_DIR = ROOT / "lexicons"
NAMESPACE_DIR = LEXICON_DIR.joinpath(*NAMESPACE.split("."))
DATAPLANE_MD = LEXICON_DIR / "DATAPLANE.md"
XRPC_PREFIX = f"/xrpc/{NAMESPACE}."

# ---------------------------------------------------------------- the lexicon language

FIELD_KEYS: dict[str, set[str]] = {  # allowed keys per type (atproto.com/specs/lexicon)
    "null": {"type", "description"},
    "boolean": {"type", "description", "default", "const"},
    "integer": {"type", "description", "minimum", "maximum", "enum", "default", "const"},
    "string": {"type", "description", "format", "maxLength", "minLength", "maxGraphemes", "minGraphemes",
               "knownValues", "enum", "default", "const"},
    "bytes": {"type", "description", "minLength", "maxLength"},
    "cid-link": {"type", "description"},
    "blob": {"type", "description", "accept", "maxSize"},
    "array": {"type", "description", "items", "minLength", "maxLength"},
    "object": {"type", "description", "required", "nullable", "properties"},
    "params": {"type", "description", "required", "properties"},
    "token": {"type", "description"},
    "ref": {"type", "description", "ref"},
    "union": {"type", "description", "refs", "closed"},
    "unknown": {"type", "description"},
}
STRING_FORMATS = {"at-identifier", "at-uri", "cid", "datetime", "did", "handle", "nsid", "tid",
                  "record-key", "uri", "language"}
PARAM_TYPES = {"boolean", "integer", "string", "unknown", "array"}
PARAM_ITEM_TYPES = {"boolean", "integer", "string", "unknown"}
CHECKED_FORMATS = ("did", "at-uri", "handle")  # the formats the server must check (DATAPLANE.md)


def load_documents() -> dict[Path, Any]:
    """Every lexicon file, parsed (or the exception that parsing raised)."""
    docs: dict[Path, Any] = {}
    for path in sorted(LEXICON_DIR.rglob("*.json")):
        try:
            docs[path] = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            docs[path] = exc
    return docs


DOCUMENTS = load_documents()
LEXICONS: dict[str, dict[str, Any]] = {  # method name -> document, for the well-formed ones
    path.stem: doc for path, doc in DOCUMENTS.items()
    if isinstance(doc, dict) and path.parent == NAMESPACE_DIR and doc.get("id") == f"{NAMESPACE}.{path.stem}"
    and isinstance(doc.get("defs"), dict) and isinstance(doc["defs"].get("main"), dict)}


def main_def(name: str) -> dict[str, Any]:
    main: dict[str, Any] = LEXICONS[name]["defs"]["main"]
    return main


def params_of(name: str) -> dict[str, dict[str, Any]]:
    """The method's parameter schemas by name."""
    properties: dict[str, dict[str, Any]] = main_def(name).get("parameters", {}).get("properties", {})
    return properties


def required_of(name: str) -> list[str]:
    required: list[str] = main_def(name).get("parameters", {}).get("required", [])
    return required


def resolve(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    """A local ref (`#name`) to its definition."""
    assert ref.startswith("#"), f"only local refs are used here, got {ref!r}"
    definition: dict[str, Any] = doc["defs"][ref[1:]]
    return definition


def item_def(doc: dict[str, Any], array: dict[str, Any]) -> dict[str, Any] | None:
    """The object definition an array's entries follow: its ref, or, for arrays of
    `unknown` that hold "a #def object, or null", the #def the description names."""
    items = array["items"]
    if items["type"] == "ref":
        return resolve(doc, items["ref"])
    if items["type"] == "unknown":
        named = re.search(r"#(\w+)", array.get("description", ""))
        if named:
            return resolve(doc, "#" + named.group(1))
    return None


def check_field(doc: dict[str, Any], field: Any, where: str) -> None:
    """Recursively check one field definition against the lexicon language."""
    assert isinstance(field, dict) and "type" in field, f"{where}: not a field definition"
    kind = field["type"]
    assert kind in FIELD_KEYS, f"{where}: unknown type {kind!r}"
    extra = set(field) - FIELD_KEYS[kind]
    assert not extra, f"{where}: keys {sorted(extra)} are not allowed on a {kind}"
    if "description" in field:
        assert isinstance(field["description"], str) and field["description"].strip(), f"{where}: empty description"
    if kind == "string":
        if "format" in field:
            assert field["format"] in STRING_FORMATS, f"{where}: unknown string format {field['format']!r}"
        for key in ("maxLength", "minLength"):
            if key in field:
                assert isinstance(field[key], int) and field[key] >= 0, f"{where}: bad {key}"
        if "knownValues" in field:
            assert all(isinstance(v, str) for v in field["knownValues"]) and field["knownValues"], where
        if "default" in field:
            assert isinstance(field["default"], str), f"{where}: default is not a string"
            if "knownValues" in field:
                assert field["default"] in field["knownValues"], f"{where}: default is not a known value"
    elif kind == "integer":
        for key in ("minimum", "maximum", "default"):
            if key in field:
                assert isinstance(field[key], int) and not isinstance(field[key], bool), f"{where}: bad {key}"
        if "minimum" in field and "maximum" in field:
            assert field["minimum"] <= field["maximum"], f"{where}: minimum > maximum"
        if "default" in field:
            assert field.get("minimum", field["default"]) <= field["default"] <= field.get("maximum", field["default"]), \
                f"{where}: default out of range"
    elif kind == "boolean":
        if "default" in field:
            assert isinstance(field["default"], bool), where
    elif kind == "array":
        assert "items" in field, f"{where}: array without items"
        check_field(doc, field["items"], where + ".items")
        if "maxLength" in field:
            assert isinstance(field["maxLength"], int) and field["maxLength"] >= 1, f"{where}: bad maxLength"
    elif kind in ("object", "params"):
        properties = field.get("properties")
        assert isinstance(properties, dict), f"{where}: {kind} without properties"
        for key in ("required", "nullable"):
            names = field.get(key, [])
            assert isinstance(names, list) and len(set(names)) == len(names), f"{where}: bad {key}"
            missing = [n for n in names if n not in properties]
            assert not missing, f"{where}: {key} names {missing} that are not properties"
        for prop, sub in properties.items():
            check_field(doc, sub, f"{where}.{prop}")
            if kind == "params":
                assert sub["type"] in PARAM_TYPES, f"{where}.{prop}: type {sub['type']!r} is not allowed in params"
                if sub["type"] == "array":
                    assert sub["items"]["type"] in PARAM_ITEM_TYPES, f"{where}.{prop}: array of {sub['items']['type']}"
    elif kind == "ref":
        ref = field["ref"]
        assert isinstance(ref, str), where
        if ref.startswith("#"):
            assert ref[1:] in doc["defs"], f"{where}: ref {ref} has no definition"
    elif kind == "union":
        for ref in field["refs"]:
            if ref.startswith("#"):
                assert ref[1:] in doc["defs"], f"{where}: ref {ref} has no definition"


# ---------------------------------------------------------------- static: the documents


@pytest.mark.parametrize("path", sorted(DOCUMENTS), ids=lambda p: str(p.relative_to(LEXICON_DIR)))
def test_document_is_a_lexicon(path: Path) -> None:
    """Valid JSON, id matching the file's path, a well-formed query with InvalidRequest."""
    doc = DOCUMENTS[path]
    assert not isinstance(doc, Exception), f"{path}: not valid JSON: {doc}"
    assert isinstance(doc, dict) and doc.get("lexicon") == 1
    expected_id = ".".join(path.relative_to(LEXICON_DIR).with_suffix("").parts)
    assert doc.get("id") == expected_id, f"{path}: id {doc.get('id')!r}, expected {expected_id!r}"
    assert set(doc) <= {"lexicon", "id", "description", "revision", "defs"}
    defs = doc["defs"]
    assert isinstance(defs, dict) and "main" in defs
    main = defs["main"]
    assert main.get("type") == "query", "smalldp's methods are all queries"
    assert set(main) <= {"type", "description", "parameters", "output", "errors"}
    assert isinstance(main.get("description"), str) and main["description"].strip()
    if "parameters" in main:
        assert main["parameters"]["type"] == "params"
        check_field(doc, main["parameters"], "main.parameters")
    output = main["output"]
    assert output["encoding"] == "application/json"
    assert output["schema"]["type"] in ("object", "ref", "union")
    check_field(doc, output["schema"], "main.output.schema")
    errors = main.get("errors", [])
    assert all(isinstance(e, dict) and isinstance(e.get("name"), str) and set(e) <= {"name", "description"}
               for e in errors)
    assert "InvalidRequest" in [e["name"] for e in errors]
    for name, definition in defs.items():
        if name != "main":
            assert definition.get("type") in ("object", "string", "token", "array", "integer", "boolean"), name
            check_field(doc, definition, name)
    for prop, array in output["schema"].get("properties", {}).items():  # "a #def, or null" names a real def
        if array.get("type") == "array" and array["items"]["type"] == "unknown":
            named = re.search(r"#(\w+)", array.get("description", ""))
            if named:
                assert named.group(1) in defs, f"{prop}: names #{named.group(1)}, which is not defined"


def test_every_document_is_loaded() -> None:
    """Each file under lexicons/dev/smalldp is a well-formed method document (none skipped)."""
    files = sorted(NAMESPACE_DIR.glob("*.json"))
    assert files, f"no lexicons in {NAMESPACE_DIR}"
    assert sorted(LEXICONS) == sorted(p.stem for p in files)


@pytest.mark.parametrize("name", sorted(LEXICONS))
def test_dataplane_conventions(name: str) -> None:
    """Arrays take at most 100 values, limit is 1..100 default 50, cursors are strings,
    and DID / at-uri / handle parameters carry their format and a maxLength."""
    for param, schema in params_of(name).items():
        where = f"{name}.{param}"
        if schema["type"] == "array":
            assert schema.get("maxLength") == 100, f"{where}: arrays take at most 100 values"
            assert schema["items"]["type"] == "string", where
            assert "maxLength" in schema["items"], f"{where}: items need a maxLength"
        if param == "limit":
            assert (schema["type"], schema.get("minimum"), schema.get("maximum"), schema.get("default")) == \
                ("integer", 1, 100, 50), where
        if param == "cursor":
            assert schema["type"] == "string", where
        string = schema["items"] if schema["type"] == "array" else schema
        if string["type"] == "string" and string.get("format") in CHECKED_FORMATS:
            assert "maxLength" in string, f"{where}: a {string['format']} needs a maxLength"
    properties = main_def(name)["output"]["schema"]["properties"]
    if "cursor" in params_of(name):
        assert properties.get("cursor", {}).get("type") == "string", f"{name}: paged, but no cursor in the output"


# ---------------------------------------------------------------- static: DATAPLANE.md


@dataclass
class Signature:
    """A method as DATAPLANE.md writes it: `name(params)` -> `{output shape}`."""

    name: str
    params: dict[str, bool]  # name -> is an array
    output: dict[str, Any]  # field -> nested field shape of its array items (or None)


_TOKENS = re.compile(r"[A-Za-z_]\w*|\.\.\.|[{}\[\]:,|]")


def parse_shape(text: str) -> dict[str, Any]:
    """`{a: [], b: [{c, d} | null], e}` -> {"a": None, "b": {"c": None, "d": None}, "e": None}."""
    tokens: list[str] = _TOKENS.findall(text)
    pos = 0

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def obj() -> dict[str, Any]:
        assert take() == "{"
        fields: dict[str, Any] = {}
        while tokens[pos] != "}":
            name = take()
            fields[name] = None
            if tokens[pos] == ":":
                take()
                fields[name] = value()
            if tokens[pos] == ",":
                take()
        take()
        return fields

    def value() -> Any:
        if tokens[pos] == "[":
            take()
            inner = obj() if tokens[pos] == "{" else None
            depth = 1
            while depth:
                token = take()
                depth += {"[": 1, "]": -1}.get(token, 0)
            return inner
        take()
        return None

    return obj()


def dataplane_signatures() -> dict[str, Signature]:
    """Every method DATAPLANE.md gives with a signature and an output shape."""
    text = DATAPLANE_MD.read_text(encoding="utf-8")
    found: dict[str, Signature] = {}
    for match in re.finditer(r"`(get\w+)\(([^)`]*)\)`\s*->\s*`([^`]*)`", text):
        name, params, output = match.groups()
        parsed = {p.strip().removesuffix("[]"): p.strip().endswith("[]") for p in params.split(",") if p.strip()}
        found[name] = Signature(name, parsed, parse_shape(" ".join(output.split())))
    return found


def dataplane_methods() -> set[str]:
    """Every method named in DATAPLANE.md's Methods section."""
    text = DATAPLANE_MD.read_text(encoding="utf-8")
    return set(re.findall(r"`(get\w+)[`(]", text.split("## Methods", 1)[1]))


def test_dataplane_md_is_parsed() -> None:
    """The parser finds the spec's methods (guards the two tests below against vacuity)."""
    signatures = dataplane_signatures()
    assert len(dataplane_methods()) >= 25 and len(signatures) >= 20
    assert signatures["getRelationships"].output["relationships"]["blockedByList"] is None
    assert signatures["getKnownLikers"].params == {"viewer": False, "subjects": True, "limit": False}


def test_every_dataplane_method_has_a_lexicon() -> None:
    """DATAPLANE.md's methods and the lexicons are the same set (plus getRecord)."""
    assert dataplane_methods() == set(LEXICONS) - {"getRecord"}


@pytest.mark.parametrize("name", sorted(dataplane_signatures()))
def test_lexicon_matches_dataplane_md(name: str) -> None:
    """Parameter names and arrays, output fields and their items' fields as DATAPLANE.md gives them."""
    signature = dataplane_signatures()[name]
    doc = LEXICONS[name]
    params = params_of(name)
    assert set(params) == set(signature.params), f"{name}: parameters"
    for param, is_array in signature.params.items():
        assert (params[param]["type"] == "array") == is_array, f"{name}.{param}: array or not"
    schema = main_def(name)["output"]["schema"]
    assert set(schema["properties"]) == set(signature.output), f"{name}: output fields"
    for field, nested in signature.output.items():
        if nested:
            definition = item_def(doc, schema["properties"][field])
            assert definition is not None, f"{name}.{field}: items have no object definition"
            assert set(definition["properties"]) == set(nested), f"{name}.{field}: item fields"


# ---------------------------------------------------------------- live: a small corpus

ALICE, BOB, CAROL, DAVE, ERIN = (did(n) for n in ("alice", "bob", "carol", "dave", "erin"))
STRANGER = did("stranger")  # never appears in any event
PROFILE = "app.bsky.actor.profile"
BLOCK = "app.bsky.graph.block"
LISTBLOCK = "app.bsky.graph.listblock"
P1 = at_uri(ALICE, POST, tid(1_000))
P2 = at_uri(ALICE, POST, tid(2_000))
REPLY = at_uri(BOB, POST, tid(3_000))
QUOTE1 = at_uri(BOB, POST, tid(4_000))
QUOTE2 = at_uri(CAROL, POST, tid(5_000))
LIST1 = at_uri(ALICE, LIST, tid(6_000))
LIST2 = at_uri(ALICE, LIST, tid(7_000))
UNKNOWN_POST = at_uri(STRANGER, POST, tid(8_000))
CREATED = "2024-01-01T00:00:00.000Z"


def corpus_events() -> list[dict[str, Any]]:
    """Two of everything a paged method lists, so that limit=1 leaves a next page."""
    ev = Events()
    image = {"$type": "app.bsky.embed.images", "images": []}
    events = [
        {"did": ALICE, "time_us": ev.now - 1, "kind": "identity",
         "identity": {"did": ALICE, "handle": "alice.test", "seq": 1, "time": CREATED}},
        ev.put(ALICE, PROFILE, "self", {"$type": PROFILE, "displayName": "Alice"}),
        ev.post(ALICE, tid(1_000), "first"),
        ev.put(ALICE, POST, tid(2_000), {"$type": POST, "text": "pic", "createdAt": CREATED, "embed": image}),
        ev.post(BOB, tid(3_000), "reply", reply_to=P1),
        ev.put(BOB, POST, tid(4_000), {"$type": POST, "text": "quote", "createdAt": CREATED, "embed": {
            "$type": "app.bsky.embed.record", "record": {"uri": P1, "cid": "bafyreisubject"}}}),
        ev.put(CAROL, POST, tid(5_000), {"$type": POST, "text": "quote", "createdAt": CREATED, "embed": {
            "$type": "app.bsky.embed.recordWithMedia", "media": image,
            "record": {"record": {"uri": P1, "cid": "bafyreisubject"}}}}),
        ev.post(DAVE, tid(5_100), "dave"),
        ev.post(ERIN, tid(5_200), "erin"),
        ev.like(BOB, tid(10_000), P1), ev.like(CAROL, tid(11_000), P1),
        ev.repost(BOB, tid(12_000), P1), ev.repost(CAROL, tid(13_000), P1),
        ev.repost(ALICE, tid(13_500), REPLY),
        ev.follow(ALICE, tid(14_000), BOB), ev.follow(ALICE, tid(15_000), CAROL),
        ev.follow(BOB, tid(16_000), ALICE), ev.follow(CAROL, tid(17_000), ALICE),
        ev.put(ALICE, BLOCK, tid(18_000), {"$type": BLOCK, "subject": DAVE, "createdAt": CREATED}),
        ev.put(ALICE, BLOCK, tid(19_000), {"$type": BLOCK, "subject": ERIN, "createdAt": CREATED}),
        ev.put(ALICE, LIST, tid(6_000), {"$type": LIST, "name": "one", "purpose": "app.bsky.graph.defs#modlist",
                                          "createdAt": CREATED}),
        ev.put(ALICE, LIST, tid(7_000), {"$type": LIST, "name": "two", "purpose": "app.bsky.graph.defs#curatelist",
                                          "createdAt": CREATED}),
        ev.listitem(ALICE, tid(20_000), LIST1, CAROL), ev.listitem(ALICE, tid(21_000), LIST1, DAVE),
        ev.put(BOB, LISTBLOCK, tid(22_000), {"$type": LISTBLOCK, "subject": LIST1, "createdAt": CREATED}),
        ev.follow(CAROL, tid(23_000), BOB), ev.like(ALICE, tid(24_000), REPLY),
        ev.listitem(ALICE, tid(25_000), LIST2, ALICE),
        ev.put(ALICE, "app.bsky.feed.generator", "hot", {"$type": "app.bsky.feed.generator", "did": "did:web:feed.test",
                                                          "displayName": "hot", "createdAt": CREATED}),
        ev.put(ALICE, "app.bsky.graph.starterpack", tid(26_000), {"$type": "app.bsky.graph.starterpack",
                                                                   "name": "pack", "list": LIST2, "createdAt": CREATED}),
    ]
    return events


# Valid values for each parameter name the lexicons use (a new name must be added here).
VALID: dict[str, list[str]] = {
    "actor": [ALICE], "viewer": [ALICE], "subject": [P1], "list": [LIST1],
    "uri": [REPLY],  # a post with links (getRecord lists them) and a parent (getThread walks it)
    "uris": [P1, REPLY, QUOTE1, UNKNOWN_POST], "subjects": [P1, REPLY, UNKNOWN_POST],
    "targets": [BOB, CAROL, DAVE, STRANGER], "dids": [ALICE, BOB, STRANGER],
    "handles": ["alice.test", "ALICE.test", "nobody.test"], "lists": [LIST1, LIST2],
    "pairs": [f"{ALICE},{DAVE}", f"{BOB},{CAROL}", f"{CAROL},{BOB}"],
    "limit": ["10"], "above": ["3"], "below": ["3"], "filter": ["posts_with_replies"],
}
OPTIONAL_SCALARS = {"limit", "cursor", "filter", "above", "below"}  # left out of "all valid parameters"

GARBAGE: dict[str, list[str]] = {
    "did": ["alice", "did:", "did:plc:", "did:PLC:abc", "did:plc:has space", P1, "https://example.com/"],
    "at-uri": ["not-an-at-uri", "at://", "at://has space/app.bsky.feed.post/3k", ALICE, "https://example.com/post/1"],
    "handle": ["nodot", "has space.test", "-leading.test", "alice..test", ALICE],
}
BAD_PAIRS = [ALICE, f"{ALICE},", f",{ALICE}", f"{ALICE},nope", f"nope,{ALICE}", f"{ALICE},{BOB},{CAROL}"]


def many(name: str, item: dict[str, Any], count: int, length: int | None = None) -> list[str]:
    """``count`` distinct syntactically valid values for an array parameter."""
    fmt = item.get("format")
    if fmt == "did":
        values = [did(f"many{i}") for i in range(count)]
    elif fmt == "at-uri":
        values = [at_uri(did(f"many{i}"), POST, tid(i * 1000)) for i in range(count)]
    elif fmt == "handle":
        values = [f"h{i}.example.com" for i in range(count)]
    elif name == "pairs":
        values = [f"{did(f'a{i}')},{did(f'b{i}')}" for i in range(count)]
    else:
        raise AssertionError(f"no generator for array parameter {name!r} (format {fmt!r}): add one")
    if length is not None:
        values = [longer(v, fmt, length) for v in values]
    return values


def longer(value: str, fmt: str | None, length: int) -> str:
    """A still-valid value of exactly ``length`` characters."""
    if fmt == "did":
        return value + "z" * (length - len(value))
    if fmt == "at-uri":
        repo, rest = value[len("at://"):].split("/", 1)
        return "at://" + repo + "z" * (length - len(value)) + "/" + rest
    if fmt == "handle":
        full, last = divmod(length - 1, 64)  # labels of 63 characters and a dot, then the last label
        assert 1 <= last + 1 <= 63
        return ("a" * 63 + ".") * full + "x" * (last + 1)
    raise AssertionError(f"no longer value for format {fmt!r}")


@dataclass
class Live:
    """The running server and the application object behind it."""

    server: ServerThread
    routes: set[str]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The corpus in a real SQLite file, served by the real app on 127.0.0.1."""
    path = tmp_path_factory.mktemp("lexicons") / "smalldp.sqlite"
    # list items' bodies not kept: getRecord of a record without one is checked too
    writer = Writer(path, body_collections=[c for c in DEFAULT_BODY_COLLECTIONS if c != LISTITEM])
    try:
        apply(writer, corpus_events())
    finally:
        writer.close()
    app = make_app(path, read_threads=1)  # only to read its route table
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None and r.method == "GET"}
    app[READERS].close()
    with ServerThread(path) as server:
        yield Live(server, routes)


QueryList = list[tuple[str, str]]


def valid_query(name: str, *, skip: str | None = None, optional: bool = True) -> QueryList:
    """All of the method's parameters with valid values (optional scalars too when ``optional``)."""
    query: QueryList = []
    for param, schema in params_of(name).items():
        if param == skip or param == "cursor" or (not optional and param in OPTIONAL_SCALARS):
            continue
        assert param in VALID, f"{name}: no valid value known for parameter {param!r}: add one to VALID"
        values = VALID[param] if schema["type"] == "array" else VALID[param][:1]
        query += [(param, v) for v in values]
    return query


def call(live: Live, name: str, query: QueryList) -> Reply:
    return live.server.get(XRPC_PREFIX + name, query)


def assert_invalid(reply: Reply, what: str) -> None:
    """A 400 in XRPC shape: {"error": "InvalidRequest", "message": ...}."""
    assert reply.status == 400, f"{what}: status {reply.status}, body {reply.body[:300]!r}"
    assert reply.content_type == "application/json", f"{what}: content type {reply.content_type}"
    body = reply.json
    assert body.get("error") == "InvalidRequest", f"{what}: {body}"
    assert isinstance(body.get("message"), str) and body["message"], f"{what}: {body}"


def short(query: QueryList) -> str:
    """A query for a failure message: the first few parameters, long values cut."""
    cut = [(p, v if len(v) <= 80 else v[:60] + f"...({len(v)} chars)") for p, v in query[:6]]
    return repr(cut) + (f" and {len(query) - 6} more" if len(query) > 6 else "")


def assert_accepted(name: str, query: QueryList, reply: Reply) -> None:
    """Not refused as invalid: a 200 following the output schema, or one of the method's
    other declared errors (getRecord's RecordNotFound for a valid uri it does not hold)."""
    if reply.status == 200:
        assert_ok(name, query, reply)
        return
    declared = {e["name"] for e in main_def(name).get("errors", [])} - {"InvalidRequest"}
    assert reply.content_type == "application/json", f"{name} {short(query)}: status {reply.status}"
    assert reply.json.get("error") in declared, f"{name} {short(query)}: {reply.status} {reply.body[:300]!r}"


def assert_ok(name: str, query: QueryList, reply: Reply, seen: dict[str, bool] | None = None) -> dict[str, Any]:
    """A 200 whose JSON body follows the output schema; returns the body."""
    assert reply.status == 200, f"{name} {short(query)}: status {reply.status}, body {reply.body[:300]!r}"
    assert reply.content_type == "application/json"
    body: dict[str, Any] = reply.json
    doc = LEXICONS[name]
    schema = main_def(name)["output"]["schema"]
    validate(doc, schema, body, name, seen)
    given = {param: sum(1 for p, _ in query if p == param) for param, _ in query}
    for field, prop in schema["properties"].items():  # position-aligned arrays: one entry per request value
        aligned = re.search(r"position-aligned with the request's (\w+)", prop.get("description", ""))
        if aligned and field in body:
            assert len(body[field]) == given.get(aligned.group(1), 0), f"{name}.{field}: not position-aligned"
    return body


_FORMAT_RE = {
    "did": re.compile(r"did:[a-z]+:[A-Za-z0-9._:%-]+\Z"),
    "at-uri": re.compile(r"at://[^\s/]+(/[^\s/]+(/[^\s/]+)?)?\Z"),
    "datetime": re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)\Z"),
    "handle": re.compile(r"([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z]([a-z0-9-]*[a-z0-9])?\Z", re.I),
    "cid": re.compile(r"[a-z0-9]+\Z", re.I),
}


def validate(doc: dict[str, Any], schema: dict[str, Any], value: Any, where: str,
             seen: dict[str, bool] | None = None) -> None:
    """``value`` follows ``schema`` (lexicon types, required and nullable fields, formats).

    ``seen`` collects, per array of the schema, whether any answer held a non-empty entry."""
    kind = schema["type"]
    if kind == "ref":
        validate(doc, resolve(doc, schema["ref"]), value, where, seen)
    elif kind == "object":
        assert isinstance(value, dict), f"{where}: not an object: {value!r}"
        for field in schema.get("required", []):
            assert field in value, f"{where}: missing required field {field!r}"
        extra = set(value) - set(schema["properties"])
        assert not extra, f"{where}: fields {sorted(extra)} are not in the lexicon"
        nullable = set(schema.get("nullable", []))
        for field, sub in schema["properties"].items():
            if field in value and not (value[field] is None and field in nullable):
                assert value[field] is not None, f"{where}.{field}: null, but not nullable"
                validate(doc, sub, value[field], f"{where}.{field}", seen)
    elif kind == "array":
        assert isinstance(value, list), f"{where}: not an array: {value!r}"
        if seen is not None:
            key = re.sub(r"\[\d+\]", "[]", where)
            seen[key] = seen.get(key, False) or any(item not in ("", None, 0, False, [], {}) for item in value)
        definition = item_def(doc, schema) if schema["items"]["type"] == "unknown" else None
        for i, item in enumerate(value):
            if definition is not None:
                if item is not None:
                    validate(doc, definition, item, f"{where}[{i}]", seen)
            else:
                validate(doc, schema["items"], item, f"{where}[{i}]", seen)
    elif kind == "string":
        assert isinstance(value, str), f"{where}: not a string: {value!r}"
        fmt = schema.get("format")
        if fmt in _FORMAT_RE:
            assert _FORMAT_RE[fmt].match(value), f"{where}: {value!r} is not a {fmt}"
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: not an integer: {value!r}"
        assert value >= schema.get("minimum", value), f"{where}: below the minimum"
    elif kind == "boolean":
        assert isinstance(value, bool), f"{where}: not a boolean: {value!r}"
    elif kind == "unknown":
        pass
    else:
        raise AssertionError(f"{where}: no validation for type {kind!r}")


# ---------------------------------------------------------------- live: the tests


def namespace_routes(live: Live) -> set[str]:
    return {r[len(XRPC_PREFIX):] for r in live.routes if r.startswith(XRPC_PREFIX)}


def test_every_route_has_a_lexicon(live: Live) -> None:
    """Each dev.smalldp.* route the app registers is described by a lexicon."""
    routes = namespace_routes(live)
    assert "getRecord" in routes  # the route table was read at all
    assert sorted(routes - set(LEXICONS)) == []


def test_every_lexicon_has_a_route(live: Live) -> None:
    """Each lexicon is a route the app registers, and it answers (not 501 MethodNotImplemented)."""
    assert sorted(set(LEXICONS) - namespace_routes(live)) == []
    for name in sorted(LEXICONS):
        reply = call(live, name, valid_query(name))
        assert reply.status != 501, f"{name}: {reply.body[:200]!r}"


def test_unknown_method_is_501(live: Live) -> None:
    """The probe above can fail: an unregistered method is a 501."""
    assert call(live, "getNothingAtAll", []).status == 501


@pytest.mark.parametrize("name", sorted(LEXICONS))
def test_valid_request(live: Live, name: str) -> None:
    """Every parameter valid: 200 and the output schema, with something in every array
    (so that the schema of their entries was really checked)."""
    query = valid_query(name)
    seen: dict[str, bool] = {}
    assert_ok(name, query, call(live, name, query), seen)
    assert sorted(k for k, v in seen.items() if not v) == [], "the corpus leaves these arrays empty"


@pytest.mark.parametrize("name", sorted(LEXICONS))
def test_required_parameters_only(live: Live, name: str) -> None:
    """Only the required parameters (arrays included): 200 and the output schema."""
    query = [(p, v) for p, v in valid_query(name, optional=False) if p in required_of(name)]
    assert_ok(name, query, call(live, name, query))


def cases(kind: str) -> list[tuple[str, str]]:
    """(method, parameter) pairs for one kind of parameter check."""
    found: list[tuple[str, str]] = []
    for name in sorted(LEXICONS):
        for param, schema in params_of(name).items():
            item = schema["items"] if schema["type"] == "array" else schema
            if ((kind == "array" and schema["type"] == "array")
                    or (kind == "integer" and schema["type"] == "integer")
                    or (kind == "required" and param in required_of(name))
                    or (kind == "format" and item.get("format") in CHECKED_FORMATS)
                    or (kind == "known" and "knownValues" in schema)
                    or (kind == "cursor" and param == "cursor")
                    or (kind == "long" and item["type"] == "string" and item.get("format") in CHECKED_FORMATS)):
                found.append((name, param))
    return found


def case_id(case: tuple[str, str]) -> str:
    return f"{case[0]}.{case[1]}"


@pytest.mark.parametrize("case", cases("array"), ids=case_id)
def test_array_takes_at_most_100_values(live: Live, case: tuple[str, str]) -> None:
    """100 valid values: 200; 101: 400 InvalidRequest."""
    name, param = case
    schema = params_of(name)[param]
    bound = schema["maxLength"]
    rest = valid_query(name, skip=param)
    full = [(param, v) for v in many(param, schema["items"], bound)]
    assert_ok(name, rest + full, call(live, name, rest + full))
    over = [(param, v) for v in many(param, schema["items"], bound + 1)]
    assert_invalid(call(live, name, rest + over), f"{name} with {bound + 1} {param}")


@pytest.mark.parametrize("case", cases("array"), ids=case_id)
def test_array_of_100_as_a_browser_encodes_it(live: Live, case: tuple[str, str]) -> None:
    """100 valid values percent-encoded as URLSearchParams does (':' '/' ',' escaped), as an
    AppView in JavaScript sends them: still a 200, not a transport-level 400 (request line limit)."""
    name, param = case
    schema = params_of(name)[param]
    query = valid_query(name, skip=param) + [(param, v) for v in many(param, schema["items"], schema["maxLength"])]
    encoded = "&".join(f"{urllib.parse.quote_plus(k, safe='')}={urllib.parse.quote_plus(v, safe='')}"
                       for k, v in query)
    url = yarl.URL(f"{live.server.client.base}{XRPC_PREFIX}{name}?{encoded}", encoded=True)

    async def get() -> Reply:
        async with live.server.client.session.get(url) as resp:
            return Reply(resp.status, resp.content_type, await resp.read())

    reply = live.server.call(get())
    assert reply.status == 200, f"{name}: {len(str(url))}-char URL: status {reply.status}, {reply.body[:200]!r}"
    assert_ok(name, query, reply)


@pytest.mark.parametrize("case", cases("integer"), ids=case_id)
def test_integer_range(live: Live, case: tuple[str, str]) -> None:
    """The minimum and maximum are accepted; one below, one above and a non-integer are 400."""
    name, param = case
    schema = params_of(name)[param]
    rest = valid_query(name, skip=param)
    for value in (schema["minimum"], schema["maximum"]):
        query = rest + [(param, str(value))]
        assert_ok(name, query, call(live, name, query))
    for bad in (str(schema["minimum"] - 1), str(schema["maximum"] + 1), "ten", "1.5", ""):
        assert_invalid(call(live, name, rest + [(param, bad)]), f"{name} {param}={bad!r}")


@pytest.mark.parametrize("case", cases("required"), ids=case_id)
def test_missing_required_parameter(live: Live, case: tuple[str, str]) -> None:
    """Leaving out a required parameter is a 400."""
    name, param = case
    assert_invalid(call(live, name, valid_query(name, skip=param)), f"{name} without {param}")


@pytest.mark.parametrize("case", cases("format"), ids=case_id)
def test_bad_syntax(live: Live, case: tuple[str, str]) -> None:
    """A value that is not a DID / at-uri / handle is a 400 (one bad value among good ones for arrays)."""
    name, param = case
    schema = params_of(name)[param]
    fmt = (schema["items"] if schema["type"] == "array" else schema)["format"]
    rest = valid_query(name, skip=param)
    good = VALID[param] if schema["type"] == "array" else []
    for bad in GARBAGE[fmt]:
        assert_invalid(call(live, name, rest + [(param, v) for v in good + [bad]]), f"{name} {param}={bad!r}")


@pytest.mark.parametrize("case", cases("long"), ids=case_id)
def test_max_length(live: Live, case: tuple[str, str]) -> None:
    """A valid value of exactly maxLength characters is accepted; one character more is a 400."""
    name, param = case
    schema = params_of(name)[param]
    item = schema["items"] if schema["type"] == "array" else schema
    bound = item["maxLength"]
    rest = valid_query(name, skip=param)
    at_bound, beyond = (longer(many(param, item, 1)[0], item["format"], n) for n in (bound, bound + 1))
    assert (len(at_bound), len(beyond)) == (bound, bound + 1)
    assert_accepted(name, rest + [(param, at_bound)], call(live, name, rest + [(param, at_bound)]))
    assert_invalid(call(live, name, rest + [(param, beyond)]), f"{name} {param} of {bound + 1} chars")


@pytest.mark.parametrize("case", cases("known"), ids=case_id)
def test_known_values(live: Live, case: tuple[str, str]) -> None:
    """Each known value is accepted; a value outside them is a 400."""
    name, param = case
    rest = valid_query(name, skip=param)
    for value in params_of(name)[param]["knownValues"]:
        assert_ok(name, rest + [(param, value)], call(live, name, rest + [(param, value)]))
    assert_invalid(call(live, name, rest + [(param, "posts_with_everything")]), f"{name} unknown {param}")


@pytest.mark.parametrize("case", cases("cursor"), ids=case_id)
def test_cursor(live: Live, case: tuple[str, str]) -> None:
    """limit=1 gives a cursor that leads to a second page; a cursor smalldp did not make is a 400."""
    name, param = case
    rest = [(p, v) for p, v in valid_query(name) if p != "limit"] + [("limit", "1")]
    first = assert_ok(name, rest, call(live, name, rest))
    cursor = first.get("cursor")
    assert isinstance(cursor, str) and cursor, f"{name}: no cursor after a full page of 1: {first}"
    second = assert_ok(name, rest + [(param, cursor)], call(live, name, rest + [(param, cursor)]))
    assert second != first, f"{name}: the cursor gave the first page again"
    for bad in ("garbage", "AAAA", "0", "not a cursor!", "x" * 500):
        assert_invalid(call(live, name, rest + [(param, bad)]), f"{name} cursor={bad!r}")


def test_pairs_are_two_dids(live: Live) -> None:
    """getBlockExistence: a pair that is not 'didA,didB' with two valid DIDs is a 400."""
    name = "getBlockExistence"
    assert params_of(name)["pairs"]["type"] == "array"
    for bad in BAD_PAIRS:
        assert_invalid(call(live, name, [("pairs", f"{ALICE},{BOB}"), ("pairs", bad)]), f"pair {bad!r}")


def test_long_values_are_really_valid() -> None:
    """The generators used above make values of the asked length that pass the format checks."""
    for fmt, length in (("did", 2048), ("at-uri", 2048), ("handle", 253)):
        value = longer(many("x", {"format": fmt}, 1)[0], fmt, length)
        assert len(value) == length and _FORMAT_RE[fmt].match(value), (fmt, value[:80])


def test_get_record_of_every_kind_follows_the_schema(live: Live) -> None:
    """getRecord of a record without a kept body (a listitem) is a 200 in the output schema
    too, with bodyKept false and no value; a post's, a like's and a follow's (compact
    bodies) have the value."""
    for uri, kept in ((at_uri(BOB, LIKE, tid(10_000)), True), (at_uri(ALICE, FOLLOW, tid(14_000)), True),
                      (at_uri(ALICE, LISTITEM, tid(20_000)), False), (REPLY, True)):
        body = assert_ok("getRecord", [("uri", uri)], call(live, "getRecord", [("uri", uri)]))
        assert body["bodyKept"] is kept and ("value" in body) is kept, (uri, body)
        assert body["links"], (uri, body)
