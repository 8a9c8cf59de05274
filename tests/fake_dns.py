"""A DNS server on 127.0.0.1 (UDP) for the handle tests: real packets, parsed and answered
with dnspython's ``dns.message``, each name's answer chosen by the test.

A name in ``txt`` answers its TXT records (each a list of character-strings, as a record
longer than 255 bytes is split); in ``empty``, NOERROR with no answer; in ``servfail``,
SERVFAIL; any other name, NXDOMAIN.  ``silent`` drops every query (a server that never
answers).  ``queries`` lists what was asked, as ``(name, type)``.  The server runs on its own
thread and event loop, like tests/fake_pds.py's FakeNetwork.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT


@dataclass
class FakeDns:
    """Answers by name (lowercase, no final dot); see the module docstring."""

    txt: dict[str, list[list[str]]] = field(default_factory=dict)
    empty: set[str] = field(default_factory=set)
    servfail: set[str] = field(default_factory=set)
    silent: bool = False
    queries: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0

    @property
    def nameserver(self) -> tuple[str, int]:
        """What RepoFetcher's ``dns_nameserver`` takes."""
        return ("127.0.0.1", self.port)

    def answer(self, wire: bytes) -> bytes | None:
        """The response to one query packet, or None (dropped)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        self.queries.append((name, dns.rdatatype.to_text(question.rdtype)))
        if self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name in self.txt:
            if question.rdtype == dns.rdatatype.TXT:
                rrset = response.find_rrset(response.answer, question.name, dns.rdataclass.IN,
                                            dns.rdatatype.TXT, create=True)
                for strings in self.txt[name]:
                    rrset.add(dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT,
                                                      [s.encode() for s in strings]), ttl=60)
        elif name not in self.empty:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> FakeDns:
        self._loop = asyncio.new_event_loop()
        fake = self

        class Protocol(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.DatagramTransport, transport)

            def datagram_received(self, data: bytes, addr: Any) -> None:
                reply = fake.answer(data)
                if reply is not None:
                    self.transport.sendto(reply, addr)

        async def start() -> None:
            transport, _ = await self._loop.create_datagram_endpoint(Protocol, local_addr=("127.0.0.1", 0))
            self._transport = transport
            self.port = transport.get_extra_info("sockname")[1]

        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._transport.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
