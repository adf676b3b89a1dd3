-- Rows of `record_visibility` written before migration 7 have no `visibility_at`; any
-- change of their visibility replaced them, where a rebuild (which has the time) would
-- let an older change lose. Their time is that of the change that last set them.
UPDATE record_visibility v
   SET visibility_at = COALESCE((c.fields -> 'visibility' ->> 'at')::timestamptz, c.at)
  FROM change_log c
 WHERE v.visibility_at IS NULL AND c.seq = v.updated_seq;
