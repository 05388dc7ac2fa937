-- OAuth state: pending authorizations (consent URLs waiting for their
-- redirect), token sets, and refresh leases (cross-process single-flight).
-- Secrets are sealed envelopes bound to their row (see store/sqlite.rs);
-- times are Unix seconds (tokens, pending) or milliseconds (leases).

CREATE TABLE oauth_pending (
    state_key   TEXT PRIMARY KEY,              -- hex SHA-256 of the state
    mailbox_id  TEXT NOT NULL UNIQUE REFERENCES mailboxes(id) ON DELETE CASCADE,
    sealed      BLOB NOT NULL,                 -- {state, verifier}, sealed
    redirect_uri TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);

CREATE TABLE oauth_tokens (
    mailbox_id    TEXT PRIMARY KEY REFERENCES mailboxes(id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    account       TEXT NOT NULL,
    scopes        TEXT NOT NULL,               -- space-separated
    expires_at    INTEGER,
    obtained_at   INTEGER NOT NULL,
    access_token  BLOB NOT NULL,               -- sealed
    refresh_token BLOB                         -- sealed
);

CREATE TABLE oauth_refresh_leases (
    mailbox_id  TEXT PRIMARY KEY REFERENCES mailboxes(id) ON DELETE CASCADE,
    owner       TEXT NOT NULL,
    expires_at  INTEGER NOT NULL               -- Unix milliseconds
);
