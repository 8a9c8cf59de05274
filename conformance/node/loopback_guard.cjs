// Preloaded (`node -r ./loopback_guard.cjs`) by the conformance harness's node processes
// (appview.cjs, dataplane.cjs): every outgoing TCP connection to anything but loopback
// fails at once, and DNS TXT queries (handle resolution's `_atproto.<handle>`) fail as
// not found, so nothing the AppView or the reference DataPlane might try reaches the
// network. Each refusal prints one line to stderr starting with "loopback_guard: blocked",
// which the harness (tests/appview_harness.py) counts and reports.
'use strict'

const net = require('node:net')
const dns = require('node:dns')

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost', '::ffff:127.0.0.1'])

function blocked(what) {
  process.stderr.write(`loopback_guard: blocked ${what}\n`)
  const err = new Error(`loopback_guard: ${what} is not on 127.0.0.1`)
  err.code = 'ECONNREFUSED'
  return err
}

const connect = net.Socket.prototype.connect
net.Socket.prototype.connect = function guardedConnect(...args) {
  // net.connect() passes arguments already normalised (an array); otherwise normalise them
  // the way net.Socket.prototype.connect does itself
  const normalized = Array.isArray(args[0]) ? args[0] : net._normalizeArgs(args)
  const options = normalized[0] || {}
  if (typeof options === 'object' && options.path === undefined && options.host !== undefined &&
      !LOOPBACK.has(String(options.host).replace(/^\[|\]$/g, ''))) {
    const err = blocked(`connect to ${options.host}:${options.port}`)
    process.nextTick(() => this.destroy(err))
    return this
  }
  return connect.apply(this, args)
}

function refuseTxt(name) {
  process.stderr.write(`loopback_guard: blocked DNS TXT ${name}\n`)
  const err = new Error(`queryTxt ENOTFOUND ${name}`)
  err.code = 'ENOTFOUND'
  return err
}
dns.resolveTxt = (name, cb) => process.nextTick(() => cb(refuseTxt(name)))
dns.Resolver.prototype.resolveTxt = function (name, cb) { process.nextTick(() => cb(refuseTxt(name))) }
dns.promises.resolveTxt = async (name) => { throw refuseTxt(name) }
dns.promises.Resolver.prototype.resolveTxt = async function (name) { throw refuseTxt(name) }
