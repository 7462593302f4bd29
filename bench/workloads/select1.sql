-- Diagnostic: the round-trip ceiling of this client/server pair (no table, no WAL).
SELECT 1;
