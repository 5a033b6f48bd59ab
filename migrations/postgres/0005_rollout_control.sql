-- Rollout control (issue 15): attempts and retries, operator notes on a job (skipped or
-- excluded), stalled phases, and what a running rollout waits for.
alter table jobs add column attempt bigint not null default 1;
alter table jobs add column retry_of text;
alter table jobs add column not_before bigint;
-- Whether the job's failure was transient (null: not classified yet).
alter table jobs add column transient bigint;
alter table jobs add column note text;
-- A stalled running phase: when it was flagged, and the figures (JSON) it was judged by.
alter table jobs add column stalled_at bigint;
alter table jobs add column stall text;
alter table rollouts add column wait_until bigint;
-- "The same answer from now on": a bulk answer kept standing for the rest of the rollout.
create table standing_answers (
    id          text primary key,
    rollout_id  text not null references rollouts (id),
    filter      text not null,
    answer      text not null,
    created_by  text not null,
    created_at  bigint not null
);
create index standing_answers_rollout on standing_answers (rollout_id);
