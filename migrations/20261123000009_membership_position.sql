-- The position of the last membership event the log stage applied, committed with its
-- checkpoint. A gateway reads it with the checkpoint before a read: its membership
-- view must have applied the log that far, or the read takes membership from
-- PostgreSQL (a removal logged before the read arrived is in force for it, however
-- late this gateway hears of it).
ALTER TABLE projector_checkpoints ADD COLUMN members_seq BIGINT NOT NULL DEFAULT 0;

-- Not known for what was applied before: as if the last position were one.
UPDATE projector_checkpoints SET members_seq = last_seq;
