-- dtq schema, version 1. Applied by dtq.storage.postgres.migrate under an advisory lock.
-- Records are kept msgspec-encoded in `data`; the columns beside them are what claims, filters
-- and sorts read. Keys a user names (task names, worker ids, usernames, counter names...) are
-- bytea holding their UTF-8: any text fits (NUL too) and orders by its bytes, as LMDB does.
-- Queue names are validated ASCII: text COLLATE "C" (byte order) so the claim SQL takes text.
CREATE SEQUENCE IF NOT EXISTS dtq_task_seq;

CREATE TABLE IF NOT EXISTS dtq_tasks (
    id uuid PRIMARY KEY,
    seq bigint NOT NULL,
    status text NOT NULL,
    queue text COLLATE "C" NOT NULL,
    name bytea NOT NULL,
    priority_rank smallint NOT NULL,
    worker_id bytea,
    tags bytea[] NOT NULL DEFAULT '{}',
    created_us bigint NOT NULL,
    updated_us bigint NOT NULL,
    dur_us bigint,                      -- max(duration µs, 0); NULL: none
    completed_us bigint,
    ready_at double precision NOT NULL, -- ready_at, else created_at: the FIFO order
    run_at double precision,
    lease_expires_at double precision,
    concurrency_key text COLLATE "C",
    data bytea NOT NULL
);
-- claims (shared_sql.CLAIM_INDEXES): ready rows in dispatch order, running rows by expiry
CREATE INDEX IF NOT EXISTS dtq_tasks_ready ON dtq_tasks (priority_rank, ready_at, seq)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS dtq_tasks_leases ON dtq_tasks (lease_expires_at)
    WHERE status = 'running';
CREATE INDEX IF NOT EXISTS dtq_tasks_running ON dtq_tasks (queue, concurrency_key)
    WHERE status = 'running';
-- list_tasks: every sort is total, (µs, seq, id)
CREATE INDEX IF NOT EXISTS dtq_tasks_created ON dtq_tasks (created_us, seq, id);
CREATE INDEX IF NOT EXISTS dtq_tasks_updated ON dtq_tasks (updated_us, seq, id);
CREATE INDEX IF NOT EXISTS dtq_tasks_duration ON dtq_tasks (dur_us, created_us, seq, id);
CREATE INDEX IF NOT EXISTS dtq_tasks_status ON dtq_tasks (status, created_us, seq, id);
CREATE INDEX IF NOT EXISTS dtq_tasks_queue ON dtq_tasks (queue, created_us, seq, id);
CREATE INDEX IF NOT EXISTS dtq_tasks_name ON dtq_tasks (name, created_us, seq, id);
CREATE INDEX IF NOT EXISTS dtq_tasks_worker ON dtq_tasks (worker_id, created_us, seq, id)
    WHERE worker_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS dtq_tasks_tags ON dtq_tasks USING gin (tags);
CREATE INDEX IF NOT EXISTS dtq_tasks_finished ON dtq_tasks (status, completed_us, seq)
    WHERE completed_us IS NOT NULL;

-- a task's history, in append order (the task row's lock serializes appends to one task)
CREATE TABLE IF NOT EXISTS dtq_task_events (
    id bigserial PRIMARY KEY,
    task_id uuid NOT NULL,
    data bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS dtq_task_events_task ON dtq_task_events (task_id, id);

-- the body fingerprint decides replay vs conflict; a key lives as long as its task
CREATE TABLE IF NOT EXISTS dtq_idempotency (
    key bytea PRIMARY KEY,
    task_id uuid NOT NULL,
    fingerprint bytea NOT NULL
);

CREATE TABLE IF NOT EXISTS dtq_workers (
    id bytea PRIMARY KEY,
    status text NOT NULL,
    data bytea NOT NULL
);

CREATE TABLE IF NOT EXISTS dtq_users (
    username bytea PRIMARY KEY,
    data bytea NOT NULL
);

CREATE TABLE IF NOT EXISTS dtq_api_keys (
    id bytea PRIMARY KEY,
    data bytea NOT NULL
);

-- shared settings, e.g. the JWT signing secret: one row per name, every server reads it
CREATE TABLE IF NOT EXISTS dtq_settings (
    name bytea PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE IF NOT EXISTS dtq_schedules (
    name bytea PRIMARY KEY,
    data bytea NOT NULL
);

CREATE TABLE IF NOT EXISTS dtq_queues (
    name bytea PRIMARY KEY,
    data bytea NOT NULL
);

CREATE TABLE IF NOT EXISTS dtq_webhooks (
    id uuid PRIMARY KEY,
    data bytea NOT NULL
);

-- deliveries by (webhook, created µs, id); the due index holds the pending ones
CREATE TABLE IF NOT EXISTS dtq_deliveries (
    webhook_id uuid NOT NULL,
    created_us bigint NOT NULL,
    id uuid NOT NULL,
    status text NOT NULL,
    due_us bigint,
    data bytea NOT NULL,
    PRIMARY KEY (webhook_id, created_us, id)
);
CREATE INDEX IF NOT EXISTS dtq_deliveries_due ON dtq_deliveries (due_us, webhook_id, created_us, id)
    WHERE due_us IS NOT NULL;

-- counters without a hot row: each server adds its commit batches' deltas to rows of its own;
-- reads sum per name
CREATE TABLE IF NOT EXISTS dtq_counters (
    server text NOT NULL,
    name bytea NOT NULL,
    value double precision NOT NULL,
    PRIMARY KEY (server, name)
);

CREATE TABLE IF NOT EXISTS dtq_day_stats (
    day integer NOT NULL,
    server text NOT NULL,
    name text NOT NULL,
    value double precision NOT NULL,
    PRIMARY KEY (day, server, name)
);
