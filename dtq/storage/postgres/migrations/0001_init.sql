-- dtq schema, version 1. Applied by dtq.storage.postgres.migrate under an advisory lock.
-- Task rows keep the msgspec-encoded record in `data`; the columns beside it are the ones
-- the claim (shared_sql.py) and the list filters/sorts read, so those never decode a row.
CREATE SEQUENCE IF NOT EXISTS dtq_task_seq;

CREATE TABLE IF NOT EXISTS dtq_tasks (
    id uuid PRIMARY KEY,
    seq bigint NOT NULL UNIQUE,
    status text NOT NULL,
    queue text NOT NULL,
    name text NOT NULL,
    priority text NOT NULL,
    priority_rank smallint NOT NULL,
    worker_id text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    ready_at double precision NOT NULL,
    run_at double precision,
    lease_expires_at double precision,
    duration double precision,
    concurrency_key text,
    data bytea NOT NULL
);
-- shared_sql.CLAIM_INDEXES for table dtq_tasks, order priority_rank, ready_at, seq
CREATE INDEX IF NOT EXISTS dtq_tasks_ready ON dtq_tasks (priority_rank, ready_at, seq)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS dtq_tasks_leases ON dtq_tasks (lease_expires_at)
    WHERE status = 'running';
-- list_tasks: filters by status/queue/priority/worker/name, sorts on a column, ties by seq
CREATE INDEX IF NOT EXISTS dtq_tasks_status ON dtq_tasks (status, seq);
CREATE INDEX IF NOT EXISTS dtq_tasks_queue ON dtq_tasks (queue, seq);
CREATE INDEX IF NOT EXISTS dtq_tasks_priority ON dtq_tasks (priority_rank, seq);
CREATE INDEX IF NOT EXISTS dtq_tasks_worker ON dtq_tasks (worker_id, seq)
    WHERE worker_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS dtq_tasks_name ON dtq_tasks (name, seq);
CREATE INDEX IF NOT EXISTS dtq_tasks_created ON dtq_tasks (created_at, seq);
CREATE INDEX IF NOT EXISTS dtq_tasks_updated ON dtq_tasks (updated_at, seq);
CREATE INDEX IF NOT EXISTS dtq_tasks_duration ON dtq_tasks (duration, seq)
    WHERE duration IS NOT NULL;
CREATE INDEX IF NOT EXISTS dtq_tasks_concurrency ON dtq_tasks (concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS dtq_idempotency (
    key text PRIMARY KEY,
    task_id uuid NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS dtq_idempotency_expiry ON dtq_idempotency (expires_at);

CREATE TABLE IF NOT EXISTS dtq_workers (
    id text PRIMARY KEY,
    last_seen double precision NOT NULL,
    data bytea NOT NULL
);

CREATE TABLE IF NOT EXISTS dtq_users (
    username text PRIMARY KEY,
    data bytea NOT NULL
);

CREATE TABLE IF NOT EXISTS dtq_api_keys (
    id text PRIMARY KEY,
    key_hash text NOT NULL UNIQUE,
    username text NOT NULL,
    data bytea NOT NULL
);

-- shared settings, e.g. the JWT signing secret: one row per name, every server reads it
CREATE TABLE IF NOT EXISTS dtq_settings (
    name text PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE IF NOT EXISTS dtq_webhooks (
    id text PRIMARY KEY,
    data bytea NOT NULL
);

CREATE TABLE IF NOT EXISTS dtq_deliveries (
    id text PRIMARY KEY,
    webhook_id text NOT NULL,
    due_at double precision,
    data bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS dtq_deliveries_due ON dtq_deliveries (due_at)
    WHERE due_at IS NOT NULL;

-- counters without a hot row: each commit batch adds delta rows under its server's id;
-- reads sum per name, and a compaction folds a server's rows into one
CREATE TABLE IF NOT EXISTS dtq_counters (
    server text NOT NULL,
    name text NOT NULL,
    value bigint NOT NULL,
    PRIMARY KEY (server, name)
);

CREATE TABLE IF NOT EXISTS dtq_day_stats (
    day text NOT NULL,
    server text NOT NULL,
    name text NOT NULL,
    value bigint NOT NULL,
    PRIMARY KEY (day, server, name)
);
