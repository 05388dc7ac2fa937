-- Profiles and mailboxes. Records are JSON (secrets excluded); secrets are
-- sealed envelopes in their own column. Indexed columns carry the invariants.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE profiles (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE COLLATE NOCASE,
    is_default INTEGER NOT NULL DEFAULT 0,
    data       TEXT NOT NULL,
    secret     BLOB
);

CREATE TABLE mailboxes (
    id         TEXT PRIMARY KEY,
    email      TEXT NOT NULL UNIQUE,
    profile_id TEXT REFERENCES profiles(id),
    data       TEXT NOT NULL,
    secret     BLOB
);

CREATE INDEX mailboxes_by_profile ON mailboxes(profile_id);
