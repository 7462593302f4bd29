-- Situation: the aggregate type appended to is defined with snapshot_every => 100 (default
-- merge-patch reducer): an append that reaches a multiple of 100 takes a snapshot in its transaction.
SELECT eventstore.define_aggregate('account', '{}', snapshot_every => 100);
