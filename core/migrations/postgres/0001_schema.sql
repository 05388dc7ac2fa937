-- The PostgreSQL store's schema: the same records as the SQLite store's
-- (core/migrations/sqlite), created in one step.
--
-- * version_seq: one sequence for every version and fencing token, so a
--   version is never reused, even after a delete.
-- * Records are JSON text (secrets excluded); secrets are sealed envelopes
--   (BYTEA) bound to their row, exactly as in the SQLite store.
-- * Keys, names and addresses use the "C" collation: comparisons and
--   ordering are by code point, as in SQLite and the memory store.
-- * Times are Unix milliseconds (BIGINT).
--
-- Every table lives in the connection's current schema (the first one on
-- its search_path).

CREATE SEQUENCE version_seq AS BIGINT;

CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE profiles (
    id         TEXT COLLATE "C" PRIMARY KEY,
    name       TEXT COLLATE "C" NOT NULL,
    -- profile_name_key(name): names are unique ignoring surrounding spaces
    -- and case (Unicode aware); computed by the library.
    name_key   TEXT COLLATE "C" NOT NULL UNIQUE,
    is_default BOOLEAN NOT NULL DEFAULT FALSE,
    version    BIGINT NOT NULL,
    data       TEXT NOT NULL,
    secret     BYTEA
);
-- At most one default profile.
CREATE UNIQUE INDEX profiles_one_default ON profiles ((TRUE)) WHERE is_default;

CREATE TABLE mailboxes (
    id         TEXT COLLATE "C" PRIMARY KEY,
    email      TEXT COLLATE "C" NOT NULL UNIQUE,
    profile_id TEXT COLLATE "C" REFERENCES profiles(id),
    version    BIGINT NOT NULL,
    data       TEXT NOT NULL,
    secret     BYTEA
);
CREATE INDEX mailboxes_by_profile ON mailboxes(profile_id);

CREATE TABLE mailbox_state (
    mailbox_id TEXT COLLATE "C" PRIMARY KEY REFERENCES mailboxes(id) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    data       TEXT NOT NULL
);

CREATE TABLE alerts (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mailbox_id TEXT COLLATE "C" NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    data       TEXT NOT NULL
);
CREATE INDEX alerts_by_mailbox ON alerts(mailbox_id, id);

CREATE TABLE profile_tests (
    profile_id TEXT COLLATE "C" PRIMARY KEY REFERENCES profiles(id) ON DELETE CASCADE,
    data       TEXT NOT NULL
);

CREATE TABLE oauth_pending (
    state_key    TEXT COLLATE "C" PRIMARY KEY,   -- hex SHA-256 of the state
    mailbox_id   TEXT COLLATE "C" NOT NULL UNIQUE REFERENCES mailboxes(id) ON DELETE CASCADE,
    sealed       BYTEA NOT NULL,                 -- {state, verifier}, sealed
    redirect_uri TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    issuer       TEXT NOT NULL,
    client_id    TEXT NOT NULL
);

CREATE TABLE grants (
    mailbox_id     TEXT COLLATE "C" PRIMARY KEY REFERENCES mailboxes(id) ON DELETE CASCADE,
    version        BIGINT NOT NULL,
    issuer         TEXT COLLATE "C" NOT NULL,
    client_id      TEXT COLLATE "C" NOT NULL,
    token_endpoint TEXT NOT NULL,
    account        TEXT COLLATE "C" NOT NULL,
    scopes         TEXT NOT NULL,                -- space-separated
    expires_at     BIGINT,
    obtained_at    BIGINT NOT NULL,
    access_token   BYTEA NOT NULL,               -- sealed
    refresh_token  BYTEA                         -- sealed
);
CREATE INDEX grants_by_account ON grants(issuer, client_id, account);

CREATE TABLE leases (
    mailbox_id TEXT COLLATE "C" NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    kind       TEXT COLLATE "C" NOT NULL,
    owner      TEXT NOT NULL,
    fence      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (mailbox_id, kind)
);

CREATE TABLE sync_cursors (
    mailbox_id TEXT COLLATE "C" PRIMARY KEY REFERENCES mailboxes(id) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    data       TEXT NOT NULL
);

CREATE TABLE sync_messages (
    mailbox_id  TEXT COLLATE "C" NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    message_key TEXT COLLATE "C" NOT NULL,
    uid         BIGINT,
    uidl        TEXT,
    outcome     TEXT NOT NULL,
    PRIMARY KEY (mailbox_id, message_key)
);
