-- A record's visibility follows last-write-wins, as the record's other fields do.
--
-- `record_visibility` (what row-level security reads) used to take the visibility of
-- the author's latest change in log order, whatever its field time, while
-- `records.data` keeps the one with the greatest time: a device that synced late with
-- an older change made the two disagree. The time of the winning change is kept here
-- and a change replaces it only with a time as great or greater (equal: the later in
-- the log), as in `ingest::lww`. Rows from before this column have no time: any change
-- replaces them.
ALTER TABLE record_visibility ADD COLUMN visibility_at TIMESTAMPTZ;
