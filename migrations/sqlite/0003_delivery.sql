-- Delivery timeout (issue 15): when a job became ready, and how long its agent has to
-- collect it before it is undeliverable (copied from the rollout at staging, like lease_ms).
alter table jobs add column queued_at bigint;
alter table jobs add column delivery_ms bigint not null default 900000;
