"""scripts/bench: one initial sync through the Python binding (asyncio
flavour), each message written by a plain Python sink function as
OUT_DIR/<uid>.eml. Prints the cycle report as JSON.

usage: python_sink.py STACK_JSON DB EMAIL OUT_DIR   (PYTHONPATH: the bench build of the package)
"""
import asyncio
import json
import os
import sys

import mailsync
from mailsync import StoreLocation


class FilesSink:
    def __init__(self, out):
        self.out = out

    def deliver(self, messages):
        for m in messages:
            with open(os.path.join(self.out, f"{m.uid}.eml"), "wb") as f:
                f.write(m.raw)
        return ["stored"] * len(messages)


async def main(stack_json, db, email, out):
    stack = json.load(open(stack_json))
    os.makedirs(out, exist_ok=True)
    options = mailsync.default_options()
    with open(stack["ca_cert"]) as f:
        options.extra_root_certs_pem = [f.read()]
    sync = await mailsync.MailSync.open(StoreLocation.sqlite(db), options)
    mailbox = await sync.directory.find_mailbox(email)
    engine = mailsync.Engine(sync, FilesSink(out), mailsync.default_engine_options())
    report = await engine.run_once(mailbox.id)
    await sync.close()
    print(json.dumps({
        "delivered": report.delivered, "bytes": report.bytes, "more": report.more,
        "duration_ms": report.duration_ms, "error": report.error_message,
    }))
    return 0 if report.error_code is None else 1


sys.exit(asyncio.run(main(*sys.argv[1:])))
