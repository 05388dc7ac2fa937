-- Work distribution: each mailbox's next incoming cycle is due at due_at
-- (Unix milliseconds; NULL: not scheduled), a function of the mailbox, its
-- state and its cursor that the library writes with every change of any of
-- them, under the state row's lock. Workers claim due mailboxes in due_at
-- order with SELECT ... FOR UPDATE SKIP LOCKED. Rows written before this
-- column existed are filled in by the library when it opens the schema.
ALTER TABLE mailbox_state ADD COLUMN due_at BIGINT;
CREATE INDEX mailbox_state_due ON mailbox_state (due_at) WHERE due_at IS NOT NULL;
