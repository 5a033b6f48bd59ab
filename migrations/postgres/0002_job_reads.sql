-- Reads of big rollouts (docs/benchmarks.md P3, defect 5): the jobs API pages by keyset
-- (wave, position), the dashboard's panels list jobs of one state and the jobs that
-- reported warnings. Each of these walks an index in listing order and stops after a page,
-- instead of sorting every job of the rollout (10,000 rows of phase maps) per request.
create index jobs_rollout_order on jobs (rollout_id, wave, position);
create index jobs_rollout_state_order on jobs (rollout_id, state, wave, position);
-- Partial: only jobs with warnings are in it, so the warnings panel's count reads the
-- index alone. The database keeps it current when a report adds the first warning.
create index jobs_rollout_warned on jobs (rollout_id, wave, position) where warnings <> '[]';
