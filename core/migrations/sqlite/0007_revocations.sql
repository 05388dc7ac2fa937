-- Token revocations (RFC 7009) that failed transiently (429, 5xx, an answer
-- that is not JSON, the endpoint unreachable), kept until they are sent
-- again. Not tied to a mailbox row: the mailbox may have been deleted.
-- `sealed` holds the token and the client secret, sealed and bound to
-- id, issuer, client and endpoint. Times are Unix milliseconds.
CREATE TABLE revocations (
    id              TEXT PRIMARY KEY,
    mailbox_id      TEXT NOT NULL,
    issuer          TEXT NOT NULL,
    client_id       TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    token_type_hint TEXT NOT NULL,
    sealed          BLOB NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL
);
CREATE INDEX revocations_due ON revocations(next_attempt_at);
