-- Idempotency-Key on creating POSTs (issue 16, item 3): the first request with a key runs
-- and its answer is kept; a retry with the same key and body gets that answer again
-- instead of a second rollout. Keys are per caller (actor) and kept 24 hours.
create table idempotency_keys (
    actor        text not null,
    key          text not null,
    route        text not null,
    request_hash text not null,
    -- 0 while the first request runs; then the HTTP status it answered.
    status       bigint not null default 0,
    body         text,
    created_at   bigint not null,
    primary key (actor, key)
);
create index idempotency_keys_created on idempotency_keys (created_at);
