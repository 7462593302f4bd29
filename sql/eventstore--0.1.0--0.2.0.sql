\echo Use "ALTER EXTENSION eventstore UPDATE" to load this file. \quit
-- eventstore 0.1.0 -> 0.2.0: every schema change of 0.2.0, so that an updated 0.1.0 install ends
-- up with exactly the catalog of a fresh 0.2.0 install (tests/upgrade checks this).
