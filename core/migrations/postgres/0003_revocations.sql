-- Token revocations (RFC 7009) that failed transiently (429, 5xx, an answer
-- that is not JSON, the endpoint unreachable), kept until they are sent
-- again. Not tied to a mailbox row: the mailbox may have been deleted.
-- `sealed` holds the token and the client secret, sealed and bound to
-- id, issuer, client and endpoint. Workers claim due rows with
-- FOR UPDATE SKIP LOCKED. Times are Unix milliseconds.
CREATE TABLE revocations (
    id              TEXT COLLATE "C" PRIMARY KEY,
    mailbox_id      TEXT COLLATE "C" NOT NULL,
    issuer          TEXT NOT NULL,
    client_id       TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    token_type_hint TEXT NOT NULL,
    sealed          BYTEA NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL
);
CREATE INDEX revocations_due ON revocations (next_attempt_at);
