-- Reads of the dashboard at 10,000 servers (issue 18 page budgets).
-- The live rollout page's change stamp (`Store::rollout_stamp`) is the last change of the
-- rollout's jobs: with this index it is one index probe instead of a read of every job of
-- the rollout, once a second for every open page (10 ms at 10,000 servers). Every change
-- a page shows touches its job's `updated_at`, decisions asked and answered included.
create index jobs_rollout_updated on jobs (rollout_id, updated_at);

-- Every agents read is in host-name order (the agents page, staging, the plan): walked
-- from this index instead of sorting every agent on each read.
create index agents_hostname on agents (hostname, id);
