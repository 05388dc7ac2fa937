-- Outgoing sync: the engine's record of every message the host handed it
-- (keyed by the host's id: its Message-ID and where it stands), and each
-- mailbox's outgoing cursor. Written under the mailbox's send lease.
CREATE TABLE outbox_messages (
    mailbox_id TEXT NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    id         TEXT NOT NULL,
    version    INTEGER NOT NULL,
    state      TEXT NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (mailbox_id, id)
) WITHOUT ROWID;

CREATE TABLE outbox_cursors (
    mailbox_id TEXT PRIMARY KEY REFERENCES mailboxes(id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    data       TEXT NOT NULL
);
