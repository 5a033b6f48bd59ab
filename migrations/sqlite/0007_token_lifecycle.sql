-- Token lifecycle (issue 16, item 4): an API token may be given an expiry, and records
-- when it was last used (rewritten at most once a minute, not on every request). Tokens
-- made before this column existed never expire. Enrollment tokens already have
-- `revoked_at`, users `disabled_at` (0001).
alter table api_tokens add column expires_at bigint;
alter table api_tokens add column last_used_at bigint;
