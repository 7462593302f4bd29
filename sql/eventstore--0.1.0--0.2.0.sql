\echo Use "ALTER EXTENSION eventstore UPDATE" to load this file. \quit
-- eventstore 0.1.0 -> 0.2.0: every schema change of 0.2.0, so that an updated 0.1.0 install ends
-- up with exactly the catalog of a fresh 0.2.0 install (tests/upgrade checks this).

-- Reducer handlers run as the role that defined them (0.1.0: as whoever asked for the state).
-- 0.1.0 did not record who defined them: they get the extension's owner.
ALTER TABLE eventstore.reducers ADD COLUMN run_as oid;
UPDATE eventstore.reducers
   SET run_as = (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = 'eventstore');

-- Every sequence is dumped with its table, so that a restored database goes on numbering past
-- the restored rows (0.1.0 missed these two: a redaction after a restore failed with 23505).
SELECT pg_catalog.pg_extension_config_dump('eventstore.redactions_redaction_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.webhook_attempts_attempt_id_seq', '');
