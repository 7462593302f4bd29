\echo Use "ALTER EXTENSION eventstore UPDATE" to load this file. \quit
-- eventstore 0.1.0 -> 0.2.0: every schema change of 0.2.0, so that an updated 0.1.0 install ends
-- up with exactly the catalog of a fresh 0.2.0 install (tests/upgrade checks this).

-- Reducer handlers run as the role that defined them (0.1.0: as whoever asked for the state).
-- 0.1.0 did not record who defined them: they get the extension's owner.
ALTER TABLE eventstore.reducers ADD COLUMN run_as oid;
UPDATE eventstore.reducers
   SET run_as = (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = 'eventstore');
