-- dtq schema, version 2: the login throttle's records, one per username, shared by every
-- server (dtq.core.auth.shared_throttle), so N servers do not give a guesser N times the tries.
-- A row may go once `forget_at` has passed (its lock is over and its failures have decayed).
CREATE TABLE IF NOT EXISTS dtq_login_failures (
    username bytea PRIMARY KEY,
    failures integer NOT NULL,
    last_s double precision NOT NULL,
    locked_until_s double precision NOT NULL,
    forget_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS dtq_login_failures_forget ON dtq_login_failures (forget_at);
