-- Outgoing sync: the engine's record of every message the host handed it
-- (keyed by the host's id: its Message-ID and where it stands), and each
-- mailbox's outgoing cursor. Written under the mailbox's send lease.
CREATE TABLE outbox_messages (
    mailbox_id TEXT COLLATE "C" NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    id         TEXT COLLATE "C" NOT NULL,
    version    BIGINT NOT NULL,
    state      TEXT NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (mailbox_id, id)
);

CREATE TABLE outbox_cursors (
    mailbox_id TEXT COLLATE "C" PRIMARY KEY REFERENCES mailboxes(id) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    data       TEXT NOT NULL
);
