-- Versioned runtime state, apart from the admin's configuration.
--
-- * version_seq: one sequence for every version and fencing token, so a
--   version is never reused, even after a delete.
-- * profiles/mailboxes: a version for optimistic concurrency; the mailbox's
--   runtime fields move out of its JSON into mailbox_state and alerts.
-- * grants: the OAuth tokens with the issuer, client, token endpoint and
--   account they were issued for (all part of the sealed values' associated
--   data). Rows of the old oauth_tokens table are converted by the library
--   when it opens the database (re-sealing needs the key).
-- * leases: one lease table for every kind of work (refresh, sync), with a
--   fencing token; replaces oauth_refresh_leases.
-- Times are Unix milliseconds.

CREATE TABLE version_seq (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO version_seq (id, value)
    VALUES (1, COALESCE((SELECT MAX(version) FROM oauth_tokens), 0) + 1);

ALTER TABLE profiles ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE mailboxes ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

CREATE TABLE mailbox_state (
    mailbox_id TEXT PRIMARY KEY REFERENCES mailboxes(id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    data       TEXT NOT NULL
);

CREATE TABLE alerts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox_id TEXT NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    data       TEXT NOT NULL
);
CREATE INDEX alerts_by_mailbox ON alerts(mailbox_id, id);

CREATE TABLE profile_tests (
    profile_id TEXT PRIMARY KEY REFERENCES profiles(id) ON DELETE CASCADE,
    data       TEXT NOT NULL
);

CREATE TABLE grants (
    mailbox_id     TEXT PRIMARY KEY REFERENCES mailboxes(id) ON DELETE CASCADE,
    version        INTEGER NOT NULL,
    issuer         TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    token_endpoint TEXT NOT NULL,
    account        TEXT NOT NULL,
    scopes         TEXT NOT NULL,              -- space-separated
    expires_at     INTEGER,
    obtained_at    INTEGER NOT NULL,
    access_token   BLOB NOT NULL,              -- sealed
    refresh_token  BLOB                        -- sealed
);
CREATE INDEX grants_by_account ON grants(issuer, client_id, account);

CREATE TABLE leases (
    mailbox_id TEXT NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    owner      TEXT NOT NULL,
    fence      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, kind)
);

DROP TABLE oauth_refresh_leases;

ALTER TABLE oauth_pending ADD COLUMN issuer TEXT NOT NULL DEFAULT '';
ALTER TABLE oauth_pending ADD COLUMN client_id TEXT NOT NULL DEFAULT '';
