#!/usr/bin/env node
// Calls a bsky.Service server the way the official AppView does: @atproto/bsky's own
// createDataPlaneClient (connect-node's gRPC transport). For tests/test_grpc_spike.py.
//
//   node grpc_spike_client.cjs URL HTTP_VERSION CALLS [CONCURRENCY]
//     URL           http://127.0.0.1:PORT
//     HTTP_VERSION  2 (the AppView's default: h2c with prior knowledge) or 1.1
//     CALLS         sequential GetLatestRev calls timed after 50 untimed ones (0: none)
//     CONCURRENCY   then as many calls again with this many in flight (throughput)
//
// Prints one JSON object: the first GetLatestRev's answer or error, what an empty actor_did
// and a method the server lacks (GetActors) answer, and the timings.
'use strict'

const { performance } = require('node:perf_hooks')
const { createDataPlaneClient, BasicHostList, Code } = require('@atproto/bsky')

const [url, httpVersion, callsArg, concArg] = process.argv.slice(2)
const calls = Number(callsArg || 0)
const concurrency = Number(concArg || 0)
const CALL = { timeoutMs: 5000 } // a server that never answers shows as deadline_exceeded

const client = createDataPlaneClient(new BasicHostList([url]), { httpVersion })

async function outcome(fn) {
  try {
    return { ok: await fn() }
  } catch (err) {
    return { error: { code: Code[err.code] ?? String(err.code), message: String(err.rawMessage ?? err.message) } }
  }
}

function quantile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

async function main() {
  const out = { httpVersion, node: process.version }
  const t0 = performance.now()
  out.first = await outcome(async () => (await client.getLatestRev({ actorDid: 'did:plc:spike' }, CALL)).rev)
  out.first_ms = performance.now() - t0
  out.invalid = await outcome(async () => (await client.getLatestRev({ actorDid: '' }, CALL)).rev)
  out.unimplemented = await outcome(async () => (await client.getActors({ dids: ['did:plc:spike'] }, CALL)).actors.length)
  out.calls_total = 3
  if (out.first.ok !== undefined && calls > 0) {
    // warm up (JIT, connection windows) before timing
    for (let i = 0; i < 50; i++) await client.getLatestRev({ actorDid: 'did:plc:spike' })
    out.calls_total += 50 + calls + (concurrency > 0 ? calls : 0)
    const lat = []
    for (let i = 0; i < calls; i++) {
      const s = performance.now()
      await client.getLatestRev({ actorDid: 'did:plc:spike' })
      lat.push((performance.now() - s) * 1000)
    }
    lat.sort((a, b) => a - b)
    out.latency_us = { n: lat.length, median: quantile(lat, 0.5), p90: quantile(lat, 0.9), p99: quantile(lat, 0.99) }
    if (concurrency > 0) {
      let next = 0
      const s = performance.now()
      const worker = async () => {
        while (next < calls) { next++; await client.getLatestRev({ actorDid: 'did:plc:spike' }) }
      }
      await Promise.all(Array.from({ length: concurrency }, worker))
      out.throughput = { concurrency, calls, calls_per_s: calls / ((performance.now() - s) / 1000) }
    }
  }
  process.stdout.write(JSON.stringify(out) + '\n')
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1) })
