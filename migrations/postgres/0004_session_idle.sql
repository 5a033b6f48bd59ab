-- The dashboard's idle timeout (issue 18, item 7): a session unused for longer than
-- `--session-idle-mins` stops working, besides its absolute `expires_at`. Sessions made
-- before this column existed count from their creation (`coalesce(last_used_at, created_at)`).
alter table sessions add column last_used_at bigint;
