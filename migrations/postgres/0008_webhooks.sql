-- Webhooks and the event stream (issue 16, item 5). `event_log` is an outbox: each row is
-- written in the transaction of the state change it reports (a rollout's state, a wave
-- opening, a job failing, rolling back, becoming undeliverable or stalling, a decision
-- asked), so an event exists exactly when its change was committed. Its id is monotonic:
-- the SSE stream's `id:` and `Last-Event-ID`, and the webhook fan-out's cursor.
create table event_log (
    id          bigint generated always as identity primary key,
    -- The writing transaction: readers take only rows below the oldest transaction still
    -- running (pg_snapshot_xmin), so a row committed late with a lower id is never skipped.
    tx_id       xid8 not null default pg_current_xact_id(),
    type        text not null,
    object_type text not null,
    object_id   text not null,
    payload     text not null,
    at          bigint not null
);
create index event_log_at on event_log (at);

-- Endpoints: the events each subscribes to (a JSON array of types), the HMAC secret that
-- signs its deliveries (kept as is: signing needs it).
create table webhooks (
    id          text primary key,
    url         text not null,
    events      text not null,
    secret      text not null,
    description text not null default '',
    enabled     boolean not null default true,
    created_by  text not null,
    created_at  bigint not null
);

-- One row per (endpoint, event): delivered at least once, retried with backoff. `attempts`
-- is the attempt log (a JSON array: time, status code or error, duration).
create table webhook_deliveries (
    id              text primary key,
    webhook_id      text not null references webhooks (id) on delete cascade,
    event_id        bigint not null,
    event_type      text not null,
    -- pending (due at next_attempt_at, or being tried until then), delivered, failed (gave up)
    state           text not null,
    attempt_count   bigint not null default 0,
    next_attempt_at bigint,
    last_status     bigint,
    last_error      text,
    attempts        text not null default '[]',
    created_at      bigint not null,
    updated_at      bigint not null,
    delivered_at    bigint,
    unique (webhook_id, event_id)
);
create index webhook_deliveries_due on webhook_deliveries (state, next_attempt_at);
create index webhook_deliveries_list on webhook_deliveries (webhook_id, created_at, id);

-- How far the fan-out (event_log → webhook_deliveries) has read.
create table webhook_cursor (
    name       text primary key,
    last_event bigint not null
);
insert into webhook_cursor (name, last_event) values ('fanout', 0);
