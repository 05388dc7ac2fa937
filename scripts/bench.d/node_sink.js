// scripts/bench: one initial sync through the Node binding, each message
// written by a plain JavaScript sink as OUT_DIR/<uid>.eml. Prints the cycle
// report as JSON.
//
// usage: node node_sink.js PACKAGE_DIR STACK_JSON DB EMAIL OUT_DIR
//   (NAPI_RS_NATIVE_LIBRARY_PATH: the bench build of the addon)
'use strict'
const fs = require('node:fs')
const path = require('node:path')

async function main([pkg, stackJson, db, email, out]) {
  const { MailSync, Engine, defaultOptions, defaultEngineOptions } = require(pkg)
  const stack = JSON.parse(fs.readFileSync(stackJson, 'utf8'))
  fs.mkdirSync(out, { recursive: true })
  const options = defaultOptions()
  options.extraRootCertsPem = [fs.readFileSync(stack.ca_cert, 'utf8')]
  const sync = await MailSync.open({ kind: 'sqlite', path: db }, options)
  const mailbox = await sync.directory.findMailbox(email)
  const sink = {
    deliver(messages) {
      for (const m of messages) fs.writeFileSync(path.join(out, `${m.uid}.eml`), m.raw)
      return messages.map(() => 'stored')
    },
  }
  const engine = new Engine(sync, sink, defaultEngineOptions())
  const report = await engine.runOnce(mailbox.id)
  await sync.close()
  console.log(JSON.stringify({
    delivered: report.delivered, bytes: report.bytes, more: report.more,
    duration_ms: report.durationMs, error: report.errorMessage ?? null,
  }))
  return report.errorCode == null ? 0 : 1
}

main(process.argv.slice(2)).then(
  (rc) => { process.exitCode = rc },
  (e) => { console.error(`node_sink: ${e.stack || e}`); process.exitCode = 1 },
)
