#!/usr/bin/env node
// Reads the interface of bsky.Service from the generated code that the installed
// @atproto/bsky ships (dist/proto/bsky_pb.js and bsky_connect.js, protoc-gen-es v1 field
// lists) and prints it:
//
//   node bsky_descriptors.cjs           JSON: every enum, message and service method
//                                        (tests/test_bsky_proto.py compares it with bsky_pb2)
//   node bsky_descriptors.cjs --proto   the same facts as a .proto file: the starting point of
//                                        src/smalldp/appview/proto/bsky.proto after a version bump
//
// Only names, numbers and types are read: no comments or prose leave the package.
'use strict'

const path = require('node:path')
const { proto3, ScalarType, MethodKind } = require('@bufbuild/protobuf')

const dist = path.dirname(require.resolve('@atproto/bsky/dist/proto/bsky_pb.js'))
const pb = require(path.join(dist, 'bsky_pb.js'))
const { Service } = require(path.join(dist, 'bsky_connect.js'))

const SCALARS = {
  [ScalarType.DOUBLE]: 'double', [ScalarType.FLOAT]: 'float',
  [ScalarType.INT64]: 'int64', [ScalarType.UINT64]: 'uint64', [ScalarType.INT32]: 'int32',
  [ScalarType.FIXED64]: 'fixed64', [ScalarType.FIXED32]: 'fixed32', [ScalarType.BOOL]: 'bool',
  [ScalarType.STRING]: 'string', [ScalarType.BYTES]: 'bytes', [ScalarType.UINT32]: 'uint32',
  [ScalarType.SFIXED32]: 'sfixed32', [ScalarType.SFIXED64]: 'sfixed64',
  [ScalarType.SINT32]: 'sint32', [ScalarType.SINT64]: 'sint64',
}

const messages = new Map() // typeName -> message type, in the order first met
const enums = new Map() // typeName -> enum type

function valueType(kind, T) {
  if (kind === 'scalar') return SCALARS[T]
  if (kind === 'enum') { enums.set(T.typeName, T); return T.typeName }
  if (kind === 'message') { visit(T); return T.typeName }
  throw new Error(`unknown field kind ${kind}`)
}

function visit(M) {
  if (messages.has(M.typeName)) return
  messages.set(M.typeName, M)
  for (const f of M.fields.list()) {
    if (f.kind === 'map') valueType(f.V.kind, f.V.T)
    else valueType(f.kind, f.T)
  }
}

function fieldFacts(f) {
  const out = { name: f.name, number: f.no, repeated: !!f.repeated, optional: !!f.opt }
  if (f.kind === 'map') {
    out.type = 'map'
    out.map = { key: SCALARS[f.K], value: valueType(f.V.kind, f.V.T) }
  } else {
    out.type = valueType(f.kind, f.T)
  }
  // a real oneof (proto3 `optional` is reported as `optional`, not as a oneof)
  out.oneof = f.oneof ? f.oneof.name : null
  return out
}

// The whole service, in its declaration order; every message it reaches.
const methods = []
for (const m of Object.values(Service.methods)) {
  visit(m.I)
  visit(m.O)
  const kind = { [MethodKind.Unary]: 'unary', [MethodKind.ServerStreaming]: 'server_streaming',
    [MethodKind.ClientStreaming]: 'client_streaming', [MethodKind.BiDiStreaming]: 'bidi_streaming' }[m.kind]
  methods.push({ name: m.name, input: m.I.typeName, output: m.O.typeName, kind })
}
// Messages and enums the file defines but the service does not reach (kept: the
// .proto should hold the file's whole interface).
for (const v of Object.values(pb)) {
  if (typeof v === 'function' && typeof v.typeName === 'string' && v.fields) visit(v)
  else if (v && typeof v === 'object') {
    let E = null
    try { E = proto3.getEnumType(v) } catch (_) { E = null }
    if (E && E.typeName) enums.set(E.typeName, E)
  }
}

const facts = {
  service: Service.typeName,
  methods,
  messages: Object.fromEntries([...messages].map(([name, M]) => [name, M.fields.list().map(fieldFacts)])),
  enums: Object.fromEntries([...enums].map(([name, E]) => [name, E.values.map((v) => ({ name: v.name, number: v.no }))])),
}

function protoText() {
  const local = (t) => (t.startsWith('bsky.') ? t.slice('bsky.'.length) : t)
  const version = require('@atproto/bsky/package.json').version
  const lines = [
    `// bsky.Service, the AppView's DataPlane interface, as @atproto/bsky ${version} ships it:`,
    '// names, numbers and types only, written out by `node conformance/node/bsky_descriptors.cjs',
    '// --proto` (scripts/gen_proto --from-npm). tests/test_bsky_proto.py checks them against the',
    '// installed package; scripts/gen_proto makes bsky_pb2.py from this file.',
    'syntax = "proto3";', '', 'package bsky;', '',
  ]
  const imports = new Set()
  for (const fields of Object.values(facts.messages)) {
    for (const f of fields) {
      for (const t of [f.type, f.map && f.map.value]) {
        if (t === 'google.protobuf.Timestamp') imports.add('google/protobuf/timestamp.proto')
        else if (t && t.startsWith('google.protobuf.')) throw new Error(`add an import for ${t}`)
      }
    }
  }
  for (const i of [...imports].sort()) lines.push(`import "${i}";`)
  if (imports.size) lines.push('')
  for (const [name, values] of Object.entries(facts.enums)) {
    if (name.slice(5).includes('.')) throw new Error(`nested enum ${name}: not handled`)
    lines.push(`enum ${local(name)} {`)
    for (const v of values) lines.push(`  ${v.name} = ${v.number};`)
    lines.push('}', '')
  }
  for (const [name, fields] of Object.entries(facts.messages)) {
    if (name.startsWith('google.protobuf.')) continue
    if (name.slice(5).includes('.')) throw new Error(`nested message ${name}: not handled`)
    lines.push(`message ${local(name)} {`)
    const oneofs = new Map()
    for (const f of fields) {
      if (f.oneof) { if (!oneofs.has(f.oneof)) oneofs.set(f.oneof, []); oneofs.get(f.oneof).push(f); continue }
      let decl
      if (f.type === 'map') decl = `map<${f.map.key}, ${local(f.map.value)}>`
      else decl = (f.repeated ? 'repeated ' : f.optional ? 'optional ' : '') + local(f.type)
      lines.push(`  ${decl} ${f.name} = ${f.number};`)
    }
    for (const [o, fs] of oneofs) {
      lines.push(`  oneof ${o} {`)
      for (const f of fs) lines.push(`    ${local(f.type)} ${f.name} = ${f.number};`)
      lines.push('  }')
    }
    lines.push('}', '')
  }
  lines.push(`service ${local(facts.service)} {`)
  for (const m of facts.methods) {
    if (m.kind !== 'unary') throw new Error(`streaming method ${m.name}: not handled`)
    lines.push(`  rpc ${m.name}(${local(m.input)}) returns (${local(m.output)});`)
  }
  lines.push('}', '')
  return lines.join('\n')
}

if (process.argv.includes('--proto')) process.stdout.write(protoText())
else process.stdout.write(JSON.stringify(facts, null, 1) + '\n')
