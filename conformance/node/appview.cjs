#!/usr/bin/env node
// Runs the official AppView (@atproto/bsky's BskyAppView, the pinned version in this
// directory) against a DataPlane: on 127.0.0.1 for the conformance tests
// (tests/appview_harness.py) and scripts/conformance, and as the appliance's
// smalldp-appview.service (systemd/, `scripts/install.sh --appview`: installed as
// /opt/smalldp/appview/appview.cjs, settings in /etc/smalldp/appview.env).
//
//   node appview.cjs            configured by the environment, as the appliance is:
//     BSKY_DATAPLANE_URLS           the DataPlane, e.g. http://127.0.0.1:8081 (required)
//     BSKY_DATAPLANE_HTTP_VERSION   2 (default: h2c with prior knowledge) or 1.1
//     BSKY_DID_PLC_URL              the PLC directory (handle resolution only; the
//                                   AppView reads identities from the DataPlane)
//     BSKY_SERVER_DID               the AppView's DID: the `aud` of service-auth JWTs
//     BSKY_SERVICE_SIGNING_KEY      hex secp256k1 private key (a fresh one when unset)
//     BSKY_BSYNC_URL, MOD_SERVICE_DID   ServerConfig.readEnv asserts both; reads never
//                                   call bsync. Default here: a closed loopback port and
//                                   did:example:mod
//     BSKY_PORT                     0 (default here: any free port)
//     SMALLDP_APPVIEW_HOST          the address to listen on (default 127.0.0.1; the
//                                   appliance's appview.env: 0.0.0.0, the LAN)
//     SMALLDP_APPVIEW_VALIDATE=1    validate every response against the lexicons (what
//                                   debugMode does; a response that fails is a 500)
//     LOG_ENABLED=true, LOG_LEVEL   the AppView's own pino logs, to stderr
//
// Prints one JSON line {"port": N, "version": "0.0.221", ...} to stdout once it listens,
// then serves until its stdin closes (when stdin is a pipe or socket, as the harness
// gives it; under systemd stdin is /dev/null and is not watched), or SIGTERM / SIGINT,
// and exits 0.
//
// Differences from `BskyAppView.start()`, all deliberate:
// * it listens on 127.0.0.1 unless SMALLDP_APPVIEW_HOST says otherwise (start() calls
//   app.listen(port): every interface);
// * NODE_ENV test/development are refused. ServerConfig.readEnv derives `debugMode` from
//   them, and debugMode turns off the blob proxy's SSRF protection
//   (BSKY_DISABLE_SSRF_PROTECTION defaults to it) and switches on response validation;
//   NODE_ENV=test also sets a GrowthBook client key ('secret-key'). The AppView itself
//   never reads NODE_ENV again, so the programmatic config below is all it sees; response
//   validation alone is switched on by SMALLDP_APPVIEW_VALIDATE through readEnv's
//   overrides (debugMode) after the SSRF default was taken from NODE_ENV.
// Nothing leaves 127.0.0.1 for the views the tests call: no search, suggestions, topics,
// courier, rolodex, KWS, etcd, GrowthBook or event tracking is configured (each is off
// when its URL is unset), bsync is a closed loopback port, and the image/video URL
// builders only format strings (BSKY_PUBLIC_URL / BSKY_CDN_URL, never fetched).
'use strict'

const http = require('node:http')
const events = require('node:events')
const fs = require('node:fs')

function defaultEnv(name, value) {
  if (process.env[name] === undefined || process.env[name] === '') process.env[name] = value
}

async function main() {
  const nodeEnv = process.env.NODE_ENV
  if (nodeEnv === 'test' || nodeEnv === 'development') {
    throw new Error(`NODE_ENV=${nodeEnv}: ServerConfig.readEnv would run the AppView in debugMode ` +
                    '(SSRF protection off); unset it or use production')
  }
  if (!process.env.BSKY_DATAPLANE_URLS) throw new Error('BSKY_DATAPLANE_URLS is required')
  defaultEnv('BSKY_PORT', '0')
  defaultEnv('BSKY_BSYNC_URL', 'http://127.0.0.1:1') // port 1: refused at once if ever called
  defaultEnv('MOD_SERVICE_DID', 'did:example:mod')
  defaultEnv('BSKY_PUBLIC_URL', 'http://127.0.0.1') // only formats image/video URLs

  const { BskyAppView, ServerConfig } = require('@atproto/bsky')
  const { Secp256k1Keypair } = require('@atproto/crypto')
  const version = require('@atproto/bsky/package.json').version

  const overrides = {}
  if (process.env.SMALLDP_APPVIEW_VALIDATE === '1') overrides.debugMode = true
  const config = ServerConfig.readEnv(overrides)
  const keyHex = process.env.BSKY_SERVICE_SIGNING_KEY
  const signingKey = keyHex ? await Secp256k1Keypair.import(keyHex) : await Secp256k1Keypair.create()
  const bsky = BskyAppView.create({ config, signingKey })

  // BskyAppView.start(), on 127.0.0.1
  bsky.ctx.featureGatesClient.start() // not configured: logs and returns
  const server = http.createServer(bsky.app)
  server.keepAliveTimeout = 90000
  server.listen(Number(process.env.BSKY_PORT), process.env.SMALLDP_APPVIEW_HOST || '127.0.0.1')
  await events.once(server, 'listening')
  const { port } = server.address()
  config.assignPort(port)
  bsky.server = server

  let stopping = false
  const stop = async () => {
    if (stopping) return
    stopping = true
    bsky.ctx.featureGatesClient.destroy()
    server.closeAllConnections?.()
    await new Promise((resolve) => server.close(() => resolve()))
    process.exit(0)
  }
  // The harness stops it by closing stdin (a pipe). /dev/null (systemd's default), a
  // terminal or a file would end at once or never: only signals stop it then.
  let stdinIsPipe = false
  try {
    const st = fs.fstatSync(0)
    stdinIsPipe = st.isFIFO() || st.isSocket()
  } catch {}
  if (stdinIsPipe) {
    process.stdin.on('end', stop)
    process.stdin.on('error', stop)
    process.stdin.resume()
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)

  process.stdout.write(JSON.stringify({
    port, host: server.address().address, version, node: process.version, serverDid: config.serverDid,
    dataplaneUrls: config.dataplaneUrls, dataplaneHttpVersion: config.dataplaneHttpVersion,
    didPlcUrl: config.didPlcUrl, validateResponses: config.debugMode,
    serviceDidKey: signingKey.did(),
  }) + '\n')
}

main().catch((err) => {
  process.stderr.write(`appview.cjs: ${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
})
