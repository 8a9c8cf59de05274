"""`/metrics` in the Prometheus text exposition format (version 0.0.4).

Samples come from callables the service registers (live ingest's counters) plus what
the store and the process say; this module only formats them.
"""

from __future__ import annotations

import math
from typing import Callable

import psutil
from aiohttp import web

from smalldp.api.readers import READERS

Sample = tuple[str, str, str, float]  # name, type (counter|gauge), help, value
SampleSource = Callable[[], list[Sample]]
SAMPLE_SOURCES = web.AppKey("sample_sources", list)
routes = web.RouteTableDef()
_process = psutil.Process()


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def exposition(samples: list[Sample]) -> str:
    """The text format: HELP and TYPE lines, then the value, for each metric. A name may
    carry labels (``name{a="b"}``): samples of one metric, adjacent, share its HELP and TYPE."""
    lines = []
    described = set()
    for name, kind, help_text, value in samples:
        family = name.partition("{")[0]
        if family not in described:
            described.add(family)
            help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
            lines += [f"# HELP {family} {help_text}", f"# TYPE {family} {kind}"]
        lines.append(f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    stats = await request.app[READERS].run(lambda r: r.stats())
    memory = _process.memory_info()
    samples: list[Sample] = [
        ("smalldp_links", "gauge", "Live backlinks in the store.", float(stats["links"])),
        ("smalldp_backlink_runs", "gauge", "Runs in the backlink LSM (merged as levels fill).",
         float(stats["runs"])),
        ("smalldp_inactive_accounts", "gauge", "Accounts hidden while inactive.",
         float(stats["inactive_accounts"])),
        ("smalldp_process_resident_memory_bytes", "gauge", "Resident set size.", float(memory.rss)),
    ]
    for source in request.app[SAMPLE_SOURCES]:
        samples += source()
    return web.Response(text=exposition(samples), content_type="text/plain",
                        headers={"X-Content-Type-Hint": "version=0.0.4"})
