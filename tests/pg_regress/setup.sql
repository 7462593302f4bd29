-- Run in every fresh test database before its golden file (tests/pg_regress/run.sh).
-- fails(statement): runs it and shows an error as "SQLSTATE message (detail)", so the golden
-- files pin the codes as well as the messages; 'no error' when it succeeds.
CREATE FUNCTION public.fails(statement text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE state text; message text; detail text;
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
    RETURN state || ' ' || message || coalesce(' (' || nullif(detail, '') || ')', '');
END
$f$;
