#!/usr/bin/env node
// The reference DataPlane for the differential tests: @atproto/bsky's own DataPlaneServer
// routes over Postgres, its indexer fed Jetstream v1 events ONE AT A TIME.
//
//   node -r ./loopback_guard.cjs dataplane.cjs
//     REF_DB_URL       postgresql://user@127.0.0.1:PORT/db (required); the schema is
//                      migrated to the latest with the package's own Database class
//     REF_DB_SCHEMA    Postgres schema (default: bsky)
//     REF_PLC_URL      the fake PLC directory (required): DID documents, and handle ->
//                      DID at REF_PLC_URL/_handle/<handle> (see below)
//     REF_EVENTS       Jetstream v1 JSONL file to index before serving (optional)
//     REF_PORT         0 (default: any free port); the server listens on 127.0.0.1 only
//
// Prints one JSON line {"port": N, "indexed": {...}} to stdout once the events are indexed
// and the server listens, then serves until its stdin closes; progress goes to stderr.
//
// Events go through IndexingService as RepoSubscription (the package's firehose consumer)
// sends them, but strictly one after another, each one's background aggregate updates
// (post_agg, profile_agg) finished before the next event starts. Run concurrently, as the
// firehose runner does per repo, those aggregate counts race (a quoteCount of 1 where the
// stream has 2). Per event:
//   commit create/update  indexRecord(uri, cid, jsonToLex(record), Create|Update, time)
//   commit delete         deleteRecord(uri)
//     then, for every commit, setCommitLastSeen(did, cid, rev) and indexHandle(did, time)
//   identity              indexHandle(did, time, force=true)
//   account               deleteActor(did) when status is deleted, else
//                         updateActorStatus(did, active, status)
// where `time` is the event's time_us as an ISO datetime (smalldp's indexedAt too).
// Jetstream carries no commit CID; setCommitLastSeen gets the record's CID (or, for a
// delete, a fixed placeholder): only repoRev is ever read back (GetLatestRev).
//
// Identity resolution stays on loopback: did:plc and did:web documents both come from
// REF_PLC_URL, and handle resolution (DNS TXT, then HTTPS .well-known, in the package)
// asks REF_PLC_URL/_handle/<handle> instead.
'use strict'

const fs = require('node:fs')
const http = require('node:http')
const events = require('node:events')
const readline = require('node:readline')

const { expressConnectMiddleware } = require('@connectrpc/connect-express')
const express = require('express')
const { IdResolver, MemoryCache } = require('@atproto/identity')
const { WriteOpAction } = require('@atproto/repo')
const { AtUri } = require('@atproto/syntax')
const { jsonToLex } = require('@atproto/lexicon')
const { CID } = require('multiformats/cid')
const { Database, BackgroundQueue } = require('@atproto/bsky')
const { IndexingService } = require('@atproto/bsky/dist/data-plane/server/indexing')
const createRoutes = require('@atproto/bsky/dist/data-plane/server/routes').default

const PLACEHOLDER_CID = CID.parse('bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua') // CID of {}

function env(name, fallback) {
  const v = process.env[name]
  if (v === undefined || v === '') {
    if (fallback === undefined) throw new Error(`${name} is required`)
    return fallback
  }
  return v
}

function isoOfMicros(us) {
  return new Date(Math.floor(Number(us) / 1000)).toISOString()
}

function makeIdResolver(plcUrl) {
  const idResolver = new IdResolver({ plcUrl, didCache: new MemoryCache() })
  // did:web documents from the fake PLC directory too (the package would fetch https://host/...)
  const plc = idResolver.did.methods.get('plc')
  idResolver.did.methods.set('web', plc)
  idResolver.handle.resolve = async (handle) => {
    const res = await fetch(new URL(`/_handle/${encodeURIComponent(handle)}`, plcUrl))
    if (!res.ok) return undefined
    const did = (await res.text()).trim()
    return did.startsWith('did:') ? did : undefined
  }
  return idResolver
}

async function indexEvent(svc, background, evt, stats) {
  const time = isoOfMicros(evt.time_us)
  const did = evt.did
  if (evt.kind === 'commit') {
    const c = evt.commit
    const uri = AtUri.make(did, c.collection, c.rkey)
    let cid = PLACEHOLDER_CID
    try {
      if (c.operation === 'delete') {
        await svc.deleteRecord(uri)
      } else {
        cid = CID.parse(c.cid)
        const action = c.operation === 'create' ? WriteOpAction.Create : WriteOpAction.Update
        await svc.indexRecord(uri, cid, jsonToLex(c.record), action, time)
      }
      stats.commits++
    } catch (err) {
      note(stats, `${c.operation} ${c.collection}: ${err.name === 'ValidationError' ? 'ValidationError' : err.message}`)
    }
    try {
      await svc.setCommitLastSeen(did, cid, c.rev)
    } catch (err) {
      note(stats, `setCommitLastSeen: ${err.message}`)
    }
    try {
      await svc.indexHandle(did, time)
    } catch (err) {
      note(stats, `indexHandle: ${err.message}`)
    }
  } else if (evt.kind === 'identity') {
    try {
      await svc.indexHandle(did, time, true)
      stats.identity++
    } catch (err) {
      note(stats, `identity indexHandle: ${err.message}`)
    }
  } else if (evt.kind === 'account') {
    const a = evt.account
    try {
      if (a.active === false && a.status === 'deleted') {
        await svc.deleteActor(did)
      } else {
        await svc.updateActorStatus(did, a.active, a.status)
      }
      stats.account++
    } catch (err) {
      note(stats, `account ${a.status}: ${err.message}`)
    }
  } else {
    note(stats, `unknown kind ${evt.kind}`)
  }
  await background.processAll()
}

// The routes, each method's unexpected failure (not a ConnectError it meant to send) logged
// to stderr with the request: the client only sees `internal`.
function loggedRoutes(routes) {
  const { ConnectError } = require('@connectrpc/connect')
  return (router) => routes({
    service(service, impl, opts) {
      const wrapped = {}
      for (const [name, fn] of Object.entries(impl)) {
        wrapped[name] = async (req, ctx) => {
          try {
            return await fn(req, ctx)
          } catch (err) {
            if (!(err instanceof ConnectError)) {
              process.stderr.write(`dataplane.cjs: ${name}(${JSON.stringify(req).slice(0, 500)}) failed: ${err && err.stack ? err.stack : err}\n`)
            }
            throw err
          }
        }
      }
      return router.service(service, wrapped, opts)
    },
  })
}

function note(stats, what) {
  stats.errors[what] = (stats.errors[what] || 0) + 1
}

async function indexFile(path, svc, background) {
  const stats = { events: 0, commits: 0, identity: 0, account: 0, errors: {}, seconds: 0 }
  const started = Date.now()
  const rl = readline.createInterface({ input: fs.createReadStream(path), crlfDelay: Infinity })
  for await (const line of rl) {
    if (!line.trim()) continue
    await indexEvent(svc, background, JSON.parse(line), stats)
    stats.events++
    if (stats.events % 2000 === 0) {
      process.stderr.write(`dataplane.cjs: ${stats.events} events indexed, ${((Date.now() - started) / 1000).toFixed(1)} s\n`)
    }
  }
  stats.seconds = (Date.now() - started) / 1000
  return stats
}

async function main() {
  const dbUrl = env('REF_DB_URL')
  const schema = env('REF_DB_SCHEMA', 'bsky')
  const plcUrl = env('REF_PLC_URL')
  const eventsPath = process.env.REF_EVENTS || ''
  const port = Number(env('REF_PORT', '0'))

  const db = new Database({ url: dbUrl, schema, poolSize: 10 })
  await db.migrateToLatestOrThrow()
  const idResolver = makeIdResolver(plcUrl)
  const background = new BackgroundQueue(db)
  const svc = new IndexingService(db, idResolver, background)

  let indexed = null
  if (eventsPath) indexed = await indexFile(eventsPath, svc, background)

  // DataPlaneServer.create(db, port, plcUrl), on 127.0.0.1 and with the resolver above
  const app = express()
  app.use(expressConnectMiddleware({ routes: loggedRoutes(createRoutes(db, idResolver)) }))
  const server = http.createServer(app)
  server.listen(port, '127.0.0.1')
  await events.once(server, 'listening')

  let stopping = false
  const stop = async () => {
    if (stopping) return
    stopping = true
    server.closeAllConnections?.()
    await new Promise((resolve) => server.close(() => resolve()))
    await background.destroy()
    await db.close()
    process.exit(0)
  }
  process.stdin.on('end', stop)
  process.stdin.on('error', stop)
  process.stdin.resume()
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)

  process.stdout.write(JSON.stringify({
    port: server.address().port, version: require('@atproto/bsky/package.json').version, indexed,
  }) + '\n')
}

main().catch((err) => {
  process.stderr.write(`dataplane.cjs: ${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
})
