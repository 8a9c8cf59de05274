"""Link extraction: every string in a record that is an at-uri, a DID or an absolute URI.

A string is a link, as Constellation decides it (its ``links`` crate), when it is

* an at-uri: ``at://`` and then at least one character, ASCII, no whitespace (lax, as
  Constellation's is), kept exactly as written;
* a DID (``did:<method>:<id>``), kept exactly as written;
* else an RFC 3986 absolute URI: ``scheme ":" hier-part ["?" query] ["#" fragment]``,
  ASCII only, with the strict grammar of the URI parser Constellation uses (fluent-uri
  0.3.2's ``Uri``): ``https://…``, ``mailto:…``, ``urn:…``, ``oracle:<uuid>``. It is
  stored normalized as fluent-uri's ``normalize()`` does (see ``normalize_uri``).

and it is at most MAX_LINK_LENGTH characters. Plain text never is: a space, a
character outside ASCII or a first character that is not a letter rules a string out,
so texts, dates, CIDs and NSIDs are not links.

Paths use Constellation's syntax: ``.subject.uri``, ``[]`` for array elements, and
``[<$type>]`` for array elements that are objects carrying a ``$type``, e.g.
``.facets[].features[app.bsky.richtext.facet#mention].did``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

_AT_URI = re.compile(r"at://\S+\Z")
_DID = re.compile(r"did:[a-z]+:[A-Za-z0-9._:%-]*[A-Za-z0-9._%-]\Z")

# RFC 3986 character classes ("%" stands for pct-encoded: its two hex digits are checked
# apart, which is much faster than an alternation inside every repetition).
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_REG = _UNRESERVED + _SUB_DELIMS + "%"  # reg-name; userinfo adds ":"
_PCHAR = _REG + ":@"
# The whole grammar in one anchored pattern with possessive repeats, so a text that
# merely starts like a scheme fails at its first space without backtracking. The
# branches follow fluent-uri's parser: after "//" comes an authority (userinfo@, a host
# that is an IP literal or a reg-name, :port digits) and a path that is empty or starts
# with "/"; without "//" the path is anything made of pchar and "/".
_URI = re.compile(
    rf"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*+):"
    rf"(?:"
    rf"//(?:(?P<userinfo>[{_REG}:]*+)@)?"
    rf"(?P<host>\[(?:[0-9A-Fa-f:.]++|[vV][0-9A-Fa-f]++\.[{_UNRESERVED}{_SUB_DELIMS}:]++)\]|[{_REG}]*+)"
    rf"(?::(?P<port>[0-9]*+))?"
    rf"(?P<apath>(?:/[{_PCHAR}/]*+)?)"
    rf"|(?!//)(?P<path>[{_PCHAR}/]*+)"
    rf")"
    rf"(?:\?(?P<query>[{_PCHAR}/?]*+))?"
    rf"(?:\#(?P<fragment>[{_PCHAR}/?]*+))?"
)
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# What a string must look like before the URI grammar is tried at all: a letter first,
# a colon somewhere (the walk checks that one with `in`, the cheapest test there is).
_SCHEME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
MAX_LINK_LENGTH = 2048
MAX_DEPTH = 32


def link_form(value: str) -> str | None:
    """The stored form of ``value`` if it is a link (see the module doc), else None.

    at-uris and DIDs come back unchanged; other URIs normalized (``normalize_uri``).
    """
    if len(value) > MAX_LINK_LENGTH:
        return None
    if value.startswith("at://") and value.isascii() and _AT_URI.match(value) is not None:
        return value
    if value.startswith("did:") and _DID.match(value) is not None:
        return value
    return normalize_uri(value)


def is_at_uri(value: str) -> bool:
    """True for a string that is a link by the at-uri rule (``at://`` and more)."""
    return len(value) <= MAX_LINK_LENGTH and value.startswith("at://") and value.isascii() \
        and _AT_URI.match(value) is not None


def is_link(value: str) -> bool:
    """True when the whole string is an at-uri, a DID or an absolute URI."""
    return link_form(value) is not None


def normalize_uri(value: str) -> str | None:
    """``value`` normalized as fluent-uri 0.3.2's ``Uri::parse(…).normalize()`` does, or
    None when it is not an absolute URI (ASCII, RFC 3986 grammar).

    Normalizing: the scheme and a reg-name host in lower case; percent-encoded unreserved
    characters decoded (and lower-cased in the host), other percent escapes in upper case;
    dot segments removed from a path that starts with "/"; an empty port dropped; an IPv6
    host written canonically (RFC 5952, ``::ffff:a.b.c.d`` for mapped IPv4), an IPvFuture
    one in lower case. Nothing else changes: no default ports removed, no trailing
    slashes added, no query reordering.
    """
    m = _URI.fullmatch(value)
    if m is None:
        return None
    pct = "%" in value
    if pct and _BAD_PERCENT.search(value) is not None:
        return None
    scheme, host = m.group("scheme"), m.group("host")
    if host is not None and host.startswith("[") and host[1:2] not in ("v", "V"):
        host = _ipv6(host[1:-1])
        if host is None:
            return None
    elif host is not None and host.startswith("["):
        host = host.lower()  # IPvFuture
    elif host is not None:
        host = _unescape(host, lower=True) if pct else host.lower()
    # The common link (lower-case scheme and host, no escapes, no dot segment, no empty
    # port) is already normal: return it as it is rather than rebuilding it.
    if not pct and scheme.islower() and host == m.group("host") and m.group("port") != "" \
            and "/." not in value:
        return value
    out = [scheme.lower(), ":"]
    path = m.group("apath") if host is not None else m.group("path")
    if pct:
        path = _unescape(path)
    if path.startswith("/"):
        path = _remove_dot_segments(path)
    if host is not None:
        out.append("//")
        userinfo = m.group("userinfo")
        if userinfo is not None:
            out += (_unescape(userinfo) if pct else userinfo, "@")
        out.append(host)
        if m.group("port"):
            out += (":", m.group("port"))
    elif path.startswith("//"):
        out.append("/.")  # else the path would read as an authority (as fluent-uri does)
    out.append(path)
    for mark, name in (("?", "query"), ("#", "fragment")):
        part = m.group(name)
        if part is not None:
            out += (mark, _unescape(part) if pct else part)
    return "".join(out)


def _unescape(text: str, lower: bool = False) -> str:
    """Percent escapes of unreserved characters decoded, the others in upper case."""
    def one(m: re.Match[str]) -> str:
        char = chr(int(m.group(1), 16))
        if char in _UNRESERVED_CHARS:
            return char.lower() if lower else char
        return "%" + m.group(1).upper()
    if lower:
        text = text.lower()  # hex digits too: `one` puts escapes back in upper case
    return _PERCENT.sub(one, text)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on a path starting with "/", step by step as fluent-uri does it:
    segments with their trailing "/", "." dropped, ".." dropping the one before."""
    parts = path.split("/")
    out = ""
    for i, part in enumerate(parts):
        seg = part + "/" if i < len(parts) - 1 else part
        if part == ".":
            out = out[:out.rfind("/") + 1]
        elif part == "..":
            if len(out) != 1:  # out always starts with "/": ".." above the root stays there
                out = out[:out.rfind("/")]
                out = out[:out.rfind("/") + 1]
        else:
            out += seg
    return out


def _ipv6(text: str) -> str | None:
    """An IPv6 literal written canonically, or None (the regex let only hex, ':' and '.')."""
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    mapped = address.ipv4_mapped
    return f"[::ffff:{mapped}]" if mapped is not None else f"[{address.compressed}]"


def extract_links(record: Any) -> list[tuple[str, str]]:
    """Return the distinct (path, target) pairs of a decoded record, in document order.

    Targets are in their stored form (``link_form``). A record counts once per
    (target, path) even if that path holds the target several times (two mentions of
    one DID in a post are one link).
    """
    return list(link_pairs(record))


def link_pairs(record: Any) -> dict[tuple[str, str], None]:
    """``extract_links`` as the dict that collects them (its keys, in order): the decoder
    makes a tuple of it without a list in between."""
    found: dict[tuple[str, str], None] = {}
    if type(record) is dict:  # every decoded record: straight to the dict walk
        _walk_dict(record, "", found, 0)
    else:
        _walk(record, "", found, 0)
    return found


# The walk visits values in document order; ``depth`` is the depth of the value itself
# and nothing deeper than MAX_DEPTH is looked at. _walk takes any value; _walk_dict and
# _walk_list take a dict or list whose depth was checked already, and handle plain
# strings, dicts and lists among their children without a call of their own (most
# children are strings: one call per record for a like, a repost or a follow).

def _walk(value: Any, path: str, found: dict[tuple[str, str], None], depth: int) -> None:
    if depth > MAX_DEPTH:
        return
    if isinstance(value, str):
        if ":" in value and value[0] in _SCHEME_START:
            target = link_form(value)
            if target is not None:
                found[(path, target)] = None
    elif isinstance(value, dict):
        _walk_dict(value, path, found, depth)
    elif isinstance(value, list):
        _walk_list(value, path, found, depth)


def _walk_dict(value: dict[str, Any], path: str, found: dict[tuple[str, str], None], depth: int) -> None:
    deeper = depth < MAX_DEPTH
    for key, child in value.items():
        kind = type(child)
        if kind is str:
            # Most strings are text, dates and CIDs: a link has a colon and starts with
            # a letter, two tests in C that reject nearly all of them before any call.
            if ":" in child and child[0] in _SCHEME_START and key != "$type":
                target = link_form(child)
                if target is not None:
                    found[(f"{path}.{key}", target)] = None
        elif kind is dict:
            if not deeper:
                continue
            # A dict in a dict (a like's or a repost's subject, a post's embed or reply):
            # its own children walked here, one call fewer per record.
            here = f"{path}.{key}"
            deepest = depth + 1 < MAX_DEPTH
            for key2, child2 in child.items():
                kind = type(child2)
                if kind is str:
                    if ":" in child2 and child2[0] in _SCHEME_START and key2 != "$type":
                        target = link_form(child2)
                        if target is not None:
                            found[(f"{here}.{key2}", target)] = None
                elif kind is dict:
                    if deepest:
                        _walk_dict(child2, f"{here}.{key2}", found, depth + 2)
                elif kind is list:
                    if deepest:
                        _walk_list(child2, f"{here}.{key2}", found, depth + 2)
                elif isinstance(child2, (dict, list)):
                    _walk(child2, f"{here}.{key2}", found, depth + 2)
        elif kind is list:
            if deeper:
                _walk_list(child, f"{path}.{key}", found, depth + 1)
        elif isinstance(child, (dict, list)):
            _walk(child, f"{path}.{key}", found, depth + 1)


def _walk_list(value: list[Any], path: str, found: dict[tuple[str, str], None], depth: int) -> None:
    depth += 1  # the items' depth
    if depth > MAX_DEPTH:
        return
    for item in value:
        kind = type(item)
        if kind is dict:
            tag = item.get("$type")
            _walk_dict(item, f"{path}[{tag}]" if isinstance(tag, str) else f"{path}[]", found, depth)
        elif kind is str:
            if ":" in item and item[0] in _SCHEME_START:
                target = link_form(item)
                if target is not None:
                    found[(f"{path}[]", target)] = None
        elif kind is list:
            _walk_list(item, f"{path}[]", found, depth)
        elif isinstance(item, dict):
            tag = item.get("$type")
            _walk(item, f"{path}[{tag}]" if isinstance(tag, str) else f"{path}[]", found, depth)
        elif isinstance(item, (str, list)):
            _walk(item, f"{path}[]", found, depth)
