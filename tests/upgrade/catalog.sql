-- The catalog of the extension as sorted lines of text, one fact per line, so that two
-- databases can be compared with diff. Covers schema eventstore and every other schema that is
-- a member of the extension; names, not OIDs. Run with psql -At.
SET search_path = pg_catalog;

-- an ACL in its canonical text form; NULL (the default privileges) spelled out
CREATE FUNCTION pg_temp.acl(acl aclitem[], kind text, owner oid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(string_agg(a::text, ' ' ORDER BY a::text), '(none)')
      FROM unnest(coalesce(acl, acldefault(kind::"char", owner))) a
$$;

CREATE FUNCTION pg_temp.lines(prefix text, body text) RETURNS SETOF text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('%s %s: %s', prefix, lpad(n::text, 4, '0'), l)
      FROM regexp_split_to_table(coalesce(body, ''), E'\n') WITH ORDINALITY AS t(l, n)
$$;

WITH ext AS (SELECT * FROM pg_extension WHERE extname = 'eventstore'),
nsp AS (
    SELECT n.oid, n.nspname, n.nspowner, n.nspacl FROM pg_namespace n
     WHERE n.nspname = 'eventstore'
        OR EXISTS (SELECT 1 FROM pg_depend d, ext
                    WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid
                      AND d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid
                      AND d.deptype = 'e')),
rel AS (
    SELECT c.*, c.oid::regclass::text AS name FROM pg_class c JOIN nsp ON nsp.oid = c.relnamespace),
fn AS (
    SELECT p.*, p.oid::regprocedure::text AS name FROM pg_proc p JOIN nsp ON nsp.oid = p.pronamespace),
typ AS (
    SELECT t.*, t.oid::regtype::text AS name FROM pg_type t JOIN nsp ON nsp.oid = t.typnamespace
     WHERE (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
       AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)),
facts(line) AS (
    -- the extension, its members and what pg_dump keeps of its tables
    SELECT format('extension %s: version=%s relocatable=%s schema=%s owner=%s', extname, extversion,
                  extrelocatable, extnamespace::regnamespace, pg_get_userbyid(extowner)) FROM ext
    UNION ALL
    SELECT format('extension member: %s', pg_describe_object(d.classid, d.objid, d.objsubid))
      FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
    UNION ALL
    SELECT format('extension config dump: %s condition=%L', c.cfg::regclass, c.cond)
      FROM ext, unnest(ext.extconfig, ext.extcondition) AS c(cfg, cond)
    -- schemas
    UNION ALL
    SELECT format('schema %s: owner=%s', nspname, pg_get_userbyid(nspowner)) FROM nsp
    UNION ALL
    SELECT format('schema %s acl: %s', nspname, pg_temp.acl(nspacl, 'n', nspowner)) FROM nsp
    UNION ALL
    SELECT format('schema %s comment: %s', nspname, obj_description(oid, 'pg_namespace'))
      FROM nsp WHERE obj_description(oid, 'pg_namespace') IS NOT NULL
    -- functions, procedures, aggregates
    UNION ALL
    SELECT format('function %s: kind=%s language=%s volatility=%s strict=%s security_definer=%s leakproof=%s parallel=%s cost=%s rows=%s owner=%s',
                  name, prokind, (SELECT lanname FROM pg_language WHERE oid = prolang), provolatile,
                  proisstrict, prosecdef, proleakproof, proparallel, procost, prorows, pg_get_userbyid(proowner))
      FROM fn
    UNION ALL
    SELECT format('function %s arguments: %s', name, pg_get_function_arguments(oid)) FROM fn
    UNION ALL
    SELECT format('function %s returns: %s', name, pg_get_function_result(oid)) FROM fn
    UNION ALL
    SELECT format('function %s settings: %s', name, coalesce(array_to_string(proconfig, ', '), '(none)')) FROM fn
    UNION ALL
    SELECT format('function %s acl: %s', name, pg_temp.acl(proacl, 'f', proowner)) FROM fn
    UNION ALL
    SELECT format('function %s library: %s symbol: %s', name, probin, prosrc) FROM fn WHERE probin IS NOT NULL
    UNION ALL
    SELECT l FROM fn, pg_temp.lines(format('function %s body', name), prosrc) l WHERE probin IS NULL
    UNION ALL
    SELECT format('function %s comment: %s', name, obj_description(oid, 'pg_proc'))
      FROM fn WHERE obj_description(oid, 'pg_proc') IS NOT NULL
    -- tables, views, sequences (composite types are under types)
    UNION ALL
    SELECT format('relation %s: kind=%s persistence=%s rls=%s force_rls=%s replica_identity=%s options=%s owner=%s',
                  name, relkind, relpersistence, relrowsecurity, relforcerowsecurity, relreplident,
                  coalesce(array_to_string(reloptions, ','), '(none)'), pg_get_userbyid(relowner))
      FROM rel WHERE relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
    UNION ALL
    SELECT format('relation %s acl: %s', name, pg_temp.acl(relacl, CASE relkind WHEN 'S' THEN 's' ELSE 'r' END, relowner))
      FROM rel WHERE relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
    UNION ALL
    SELECT format('relation %s comment: %s', name, obj_description(oid, 'pg_class'))
      FROM rel WHERE relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'i', 'I') AND obj_description(oid, 'pg_class') IS NOT NULL
    UNION ALL
    SELECT l FROM rel, pg_temp.lines(format('view %s definition', name), pg_get_viewdef(oid)) l
     WHERE relkind IN ('v', 'm')
    -- columns, in their order (dropped ones left out): an added column must come last in a
    -- fresh install too, or the two row types differ
    UNION ALL
    SELECT format('column %s.%s: position=%s type=%s not_null=%s default=%s identity=%s generated=%s collation=%s',
                  r.name, quote_ident(a.attname),
                  row_number() OVER (PARTITION BY r.oid ORDER BY a.attnum),
                  format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  coalesce(pg_get_expr(ad.adbin, ad.adrelid), '(none)'),
                  nullif(a.attidentity, ''), nullif(a.attgenerated, ''),
                  CASE WHEN a.attcollation <> 0 THEN a.attcollation::regcollation::text END)
      FROM rel r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
     WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
    UNION ALL
    SELECT format('column %s.%s acl: %s', r.name, quote_ident(a.attname), pg_temp.acl(a.attacl, 'c', r.relowner))
      FROM rel r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
     WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attacl IS NOT NULL
    UNION ALL
    SELECT format('column %s.%s comment: %s', r.name, quote_ident(a.attname), col_description(r.oid, a.attnum))
      FROM rel r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
     WHERE col_description(r.oid, a.attnum) IS NOT NULL
    -- indexes, constraints, triggers, policies
    UNION ALL
    SELECT format('index %s: %s', i.indexrelid::regclass, pg_get_indexdef(i.indexrelid))
      FROM pg_index i JOIN rel r ON r.oid = i.indrelid
    UNION ALL
    SELECT format('constraint %s.%s: %s', coalesce(r.name, con.contypid::regtype::text), quote_ident(con.conname),
                  pg_get_constraintdef(con.oid))
      FROM pg_constraint con LEFT JOIN rel r ON r.oid = con.conrelid
     WHERE r.oid IS NOT NULL OR con.contypid IN (SELECT oid FROM typ)
    UNION ALL
    SELECT format('constraint %s.%s comment: %s', coalesce(r.name, con.contypid::regtype::text), quote_ident(con.conname),
                  obj_description(con.oid, 'pg_constraint'))
      FROM pg_constraint con LEFT JOIN rel r ON r.oid = con.conrelid
     WHERE (r.oid IS NOT NULL OR con.contypid IN (SELECT oid FROM typ)) AND obj_description(con.oid, 'pg_constraint') IS NOT NULL
    UNION ALL
    SELECT format('trigger %s.%s: %s enabled=%s', r.name, quote_ident(t.tgname), pg_get_triggerdef(t.oid), t.tgenabled)
      FROM pg_trigger t JOIN rel r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
    UNION ALL
    SELECT format('trigger %s.%s comment: %s', r.name, quote_ident(t.tgname), obj_description(t.oid, 'pg_trigger'))
      FROM pg_trigger t JOIN rel r ON r.oid = t.tgrelid
     WHERE NOT t.tgisinternal AND obj_description(t.oid, 'pg_trigger') IS NOT NULL
    UNION ALL
    SELECT format('policy %s.%s: command=%s permissive=%s roles=%s using=%s with_check=%s',
                  r.name, quote_ident(p.polname), p.polcmd, p.polpermissive,
                  (SELECT string_agg(CASE WHEN ro = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(ro) END, ',' ORDER BY 1)
                     FROM unnest(p.polroles) ro),
                  coalesce(pg_get_expr(p.polqual, p.polrelid), '(none)'),
                  coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '(none)'))
      FROM pg_policy p JOIN rel r ON r.oid = p.polrelid
    UNION ALL
    SELECT format('policy %s.%s comment: %s', r.name, quote_ident(p.polname), obj_description(p.oid, 'pg_policy'))
      FROM pg_policy p JOIN rel r ON r.oid = p.polrelid WHERE obj_description(p.oid, 'pg_policy') IS NOT NULL
    -- types (composite types' attributes are under columns)
    UNION ALL
    SELECT format('type %s: type=%s category=%s base=%s not_null=%s default=%s owner=%s', name, typtype, typcategory,
                  CASE WHEN typbasetype <> 0 THEN format_type(typbasetype, typtypmod) END, typnotnull, typdefault,
                  pg_get_userbyid(typowner))
      FROM typ
    UNION ALL
    SELECT format('type %s label %s: %s', t.name, lpad(e.enumsortorder::text, 4, '0'), e.enumlabel)
      FROM typ t JOIN pg_enum e ON e.enumtypid = t.oid
    UNION ALL
    SELECT format('type %s acl: %s', name, pg_temp.acl(typacl, 'T', typowner)) FROM typ
    UNION ALL
    SELECT format('type %s comment: %s', name, obj_description(oid, 'pg_type'))
      FROM typ WHERE obj_description(oid, 'pg_type') IS NOT NULL
    -- sequences
    UNION ALL
    SELECT format('sequence %s: type=%s start=%s increment=%s min=%s max=%s cache=%s cycle=%s owned_by=%s',
                  r.name, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
                  (SELECT format('%s.%s', d.refobjid::regclass, quote_ident(a.attname))
                     FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = r.oid
                      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
      FROM rel r JOIN pg_sequence s ON s.seqrelid = r.oid
)
SELECT line FROM facts ORDER BY line COLLATE "C";
