-- Incoming sync: each mailbox's cursor, and the outcome of every message
-- taken in, keyed by its idempotency key (written in one transaction).
CREATE TABLE sync_cursors (
    mailbox_id TEXT PRIMARY KEY REFERENCES mailboxes(id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    data       TEXT NOT NULL
);

CREATE TABLE sync_messages (
    mailbox_id  TEXT NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    message_key TEXT NOT NULL,
    uid         INTEGER,
    uidl        TEXT,
    outcome     TEXT NOT NULL,
    PRIMARY KEY (mailbox_id, message_key)
) WITHOUT ROWID;
