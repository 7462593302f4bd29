"""Hypothesis strategies for the fuzz layer: odd names, JSON texts (deep, wide, extreme numbers),
programs (reducer rules, transforms), JSON Schemas, cursors, arrays with NULLs, extreme scalars.

JSON is generated as text, not as Python values: 1e400, -0, 100,000-digit numbers and nesting
deeper than Python's recursion limit cannot round-trip through `json`. Every generated text is a
`J`, a str that carries a short description (`.desc`) for reports. Lists of special values go
from simple to pathological, because hypothesis shrinks towards the first element.
"""

import json

from hypothesis import strategies as st


class J(str):
    """A JSON (or other) text with a short description for reports."""

    desc = None


def j(text, desc=None):
    s = J(text)
    s.desc = desc if desc is not None else (repr(text) if len(text) <= 100 else f"{text[:50]!r}…[{len(text)} chars]")
    return s


def dumps(value):
    return json.dumps(value, ensure_ascii=False)


def mostly(good, odd, odds=4):
    """`good` about `odds` times out of odds + 1, else `odd`: a call with one odd argument gets
    further than one where every argument is odd."""
    return st.integers(0, odds).flatmap(lambda i: odd if i == 0 else good)


# --- names ---------------------------------------------------------------------------------

SPECIAL_NAMES = [
    "a", "", " ", ".", "..", "a.b", "'", '"', "''", "\\", "%", "%s", "$1", "a b", "\t", "\n", "-", "*",
    "é", "日本語", "😀", "\u200b", "\u202eabc", "e\u0301", "İ", "ﬁ", "NULL", "null", "default", "public",
    "pg_temp", "eventstore", "$delete", "a/b", "Robert'); DROP TABLE eventstore.events;--",
    "a" * 255, "a" * 256, "é" * 255, "é" * 256, "😀" * 255, "😀" * 256, " " * 300, "x" * 3000, "y" * 100_000,
]


def _desc_name(s):
    if len(s) > 40:
        return j(s, f"{s[:8]!r}…[{len(s)} chars]")
    return s


unicode_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24)

names = st.one_of(
    st.sampled_from(SPECIAL_NAMES).map(_desc_name),
    unicode_text,
    st.none(),
)
# names that usually pass validation, so that calls get further than the argument checks
plain_names = st.one_of(st.sampled_from(["a", "order", "Order.Placed", "é", "a" * 255, "x-1", "'q'", "😀"]),
                        st.from_regex(r"\A[a-z][a-z0-9_.\-]{0,20}\Z"))
maybe_names = st.one_of(plain_names, names)

# --- scalars -------------------------------------------------------------------------------

INT4 = [0, 1, -1, 2, -2, 3, 100, 10000, 10001, 2**31 - 1, -(2**31), 2**31 - 2, -(2**31) + 1, 1_000_000]
INT8 = [0, 1, -1, 2, -2, 100, 2**31 - 1, 2**31, -(2**31), 2**63 - 1, -(2**63), 2**63 - 2, -(2**63) + 1, 10**15]
int4s = st.one_of(st.none(), st.sampled_from(INT4), st.integers(-(2**31), 2**31 - 1))
int8s = st.one_of(st.none(), st.sampled_from(INT8), st.integers(-(2**63), 2**63 - 1))
small_int4s = st.one_of(st.none(), st.sampled_from([0, 1, 2, -1, 3, 10, 2**31 - 1, -(2**31)]))
bools = st.sampled_from([None, True, False])
TIMESTAMPS = [None, "now", "2026-01-01T00:00:00Z", "epoch", "infinity", "-infinity", "4713-01-01 00:00:00+00 BC",
              "294276-12-31 23:59:59+00", "0001-01-01T00:00:00Z", "1970-01-01T00:00:00.000001Z", "2000-02-29T23:59:59.999999+14:00"]
timestamps = st.sampled_from(TIMESTAMPS)
DATES = [None, "2026-01-01", "today", "infinity", "-infinity", "4713-01-01 BC", "5874897-12-31", "1970-01-01", "2000-02-29"]
dates = st.sampled_from(DATES)
INTERVALS = [None, "0", "1 second", "24 hours", "-1 day", "1 microsecond", "-178000000 years", "178000000 years",
             "100 years", "1 mon -31 days"]
intervals = st.sampled_from(INTERVALS)
UUIDS = [None, "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
         "01a20686-a764-70ea-a8a3-22677e56ed7b", "6f1c3c1e-0c1a-4d7e-9a55-111111111111"]
uuids = st.one_of(st.sampled_from(UUIDS), st.uuids().map(str))

# --- arrays --------------------------------------------------------------------------------

text_arrays = st.one_of(
    st.none(),
    st.sampled_from([[], [None], ["a", None], [None, None], [""], ["a"] * 1000, ["a" * 256], ["OrderPlaced"],
                     ["a", "a"], ["😀", "é"]]),
    st.lists(st.one_of(plain_names, names), max_size=5),
)
int_arrays = st.one_of(
    st.none(),
    st.sampled_from([[], [None], [0], [0, None], [-1], [2**31 - 1], [-(2**31)], [0] * 1000, [1, 2, 3], [5, 0, 300],
                     [86400] * 100, [None, None]]),
    st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), max_size=6),
)

# --- JSON texts ----------------------------------------------------------------------------

NUMBERS = ["0", "1", "-1", "-0", "-0.0", "0e0", "1.5", "1e400", "-1e400", "1e-400", "1E+2", "2147483647", "2147483648",
           "-2147483648", "-2147483649", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
           "-9223372036854775809", "18446744073709551616", "1.7976931348623157e308", "5e-324",
           "123456789012345678901234567890.123456789", "1" + "0" * 1000, "0." + "0" * 1000 + "1", "1e100000"]
STRINGS = ['""', '"a"', '"😀"', '"\\ud83d\\ude00"', '"\\""', '"a.b"', '"$ref"', '"\\u0000"', '"\\ud800"',
           '"00000000-0000-0000-0000-000000000000"', '"2024-01-01T00:00:00Z"', '"infinity"', '"9999-12-31T23:59:60Z"',
           '"0000-01-01T00:00:00Z"', '"294277-01-01T00:00:00Z"', '"' + "x" * 70000 + '"']
OTHERS = ["null", "true", "false", "{}", "[]"]
LEAVES = ["1", "null", '"a"'] + [x for x in NUMBERS if x not in ("1",)] + STRINGS + OTHERS + ["{}", "[]"]
KEYS = ["a", "", ".", "a.b", "$ref", "$delete", "0", "😀", "é", '"', "\\", " ", "k" * 300, "__proto__", "redacted"]
DEPTHS = [1, 2, 3, 8, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 200, 500, 1000, 3000]
WIDTHS = [0, 1, 2, 10, 100, 1000, 20000]


def _leaf_desc(leaf):
    return leaf if len(leaf) <= 24 else f"{leaf[:12]}…[{len(leaf)} chars]"


leaves = st.sampled_from(LEAVES)
# leaves that stay small in storage and in output (1e100000 prints 100,001 digits)
short_leaves = st.sampled_from([x for x in LEAVES if len(x) <= 1100 and x != "1e100000"])


def _width(n, leaf):
    """Keeps a wide value of long leaves under about 2 MB."""
    size = 100_001 if leaf == "1e100000" else len(leaf)   # what it becomes as text
    return min(n, max(1, 2_000_000 // (size + 8)))


@st.composite
def small_json(draw, max_leaves=8):
    """Small JSON values with odd keys and values, as text."""
    scalar = st.one_of(st.sampled_from([x for x in LEAVES[:-2] if len(x) <= 1100 and x != "1e100000"]).map(lambda t: ("raw", t)),
                       unicode_text.map(lambda s: ("raw", dumps(s))),
                       st.integers().map(lambda n: ("raw", str(n))),
                       st.floats(allow_nan=False, allow_infinity=False).map(lambda f: ("raw", repr(f))))
    tree = draw(st.recursive(scalar, lambda kids: st.one_of(
        st.lists(kids, max_size=4).map(lambda xs: ("arr", xs)),
        st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), unicode_text), kids), max_size=4).map(lambda kv: ("obj", kv))),
        max_leaves=max_leaves))

    def render(t):
        kind, v = t
        if kind == "raw":
            return v
        if kind == "arr":
            return "[" + ",".join(render(x) for x in v) + "]"
        return "{" + ",".join(dumps(k) + ":" + render(x) for k, x in v) + "}"

    text = render(tree)
    return j(text, text if len(text) <= 120 else None)


def nest(kind, depth, leaf, key="a"):
    """JSON text nested `depth` levels (objects under `key`, arrays, or alternating)."""
    k = dumps(key)
    if kind == "obj":
        return ("{" + k + ":") * depth + leaf + "}" * depth
    if kind == "arr":
        return "[" * depth + leaf + "]" * depth
    opens, closes = [], []
    for i in range(depth):
        if i % 2 == 0:
            opens.append("{" + k + ":")
            closes.append("}")
        else:
            opens.append("[")
            closes.append("]")
    return "".join(opens) + leaf + "".join(reversed(closes))


@st.composite
def json_values(draw, top_object=False, big=True):
    """A JSON text: deep, wide, extreme or small. With top_object, an object at the top.
    Without big, at most a few kB (for values repeated in 300-step programs and 10,000-event
    batches): no wide values, long keys or long strings, depth up to 1,000."""
    if big:
        shape = draw(st.sampled_from(["small", "leaf", "deep", "wide_obj", "wide_arr", "long_key", "dup_keys", "deep_in_wide"]))
    else:
        shape = draw(st.sampled_from(["small", "leaf", "deep", "dup_keys"]))
    if shape == "small":
        v = draw(small_json())
        desc = v.desc
    elif shape == "leaf":
        v = draw(leaves if big else short_leaves)
        desc = _leaf_desc(v)
    elif shape == "deep":
        kind = draw(st.sampled_from(["obj", "arr", "mixed"]))
        depth = draw(st.sampled_from(DEPTHS if big else [d for d in DEPTHS if d <= 1000]))
        leaf = draw(st.sampled_from(["1", "{}", "[]", "null", "1e400", '"x"']))
        key = draw(st.sampled_from(KEYS[:8]))
        v = nest(kind, depth, leaf, key)
        desc = f"{kind} nested {depth} deep (key {key!r}, leaf {leaf})"
    elif shape == "wide_obj":
        leaf = draw(leaves)
        n = _width(draw(st.sampled_from(WIDTHS)), leaf)
        v = "{" + ",".join(f'"k{i}":{leaf}' for i in range(n)) + "}"
        desc = f"object of {n} keys, each {_leaf_desc(leaf)}"
    elif shape == "wide_arr":
        leaf = draw(leaves)
        n = _width(draw(st.sampled_from(WIDTHS)), leaf)
        v = "[" + ",".join([leaf] * n) + "]"
        desc = f"array of {n} x {_leaf_desc(leaf)}"
    elif shape == "long_key":
        n = draw(st.sampled_from([255, 256, 10000, 300000]))
        v = '{"' + "k" * n + '":1}'
        desc = f"object with one key of {n} chars"
    elif shape == "dup_keys":
        v = '{"a":1,"a":{"a":2},"a":[3]}'
        desc = v
    else:
        n = draw(st.sampled_from([2, 100, 1000]))
        depth = draw(st.sampled_from([10, 64, 65, 129]))
        inner = nest("obj", depth, "1")
        v = "[" + ",".join([inner] * n) + "]"
        desc = f"array of {n} objects each nested {depth} deep"
    if top_object and not v.startswith("{"):
        key = draw(st.sampled_from(["p", "amount", "a", "customer", ""]))
        v = "{" + dumps(key) + ":" + v + "}"
        desc = f"{{{key!r}: {desc}}}"
    return j(v, desc)


def jsonb_args(top_object=True):
    """A jsonb argument: mostly objects (what the functions want), else any JSON or SQL NULL."""
    return st.one_of(json_values(top_object=top_object), json_values(), st.none())


objects = json_values(top_object=True)
small_objects = json_values(top_object=True, big=False)

# --- known pathological inputs (explicit examples of the tests) ---------------------------

# --- paths and programs --------------------------------------------------------------------


def _segments(n, seg="a"):
    return ".".join([seg] * n)


PATH_SPECS = [
    ("a", "a"), ("a.b", "a.b"), ("balance", "balance"), ("total.amount", "total.amount"), ("", "''"), (".", "'.'"),
    ("..", "'..'"), ("a..b", "'a..b'"), (".a", "'.a'"), ("a.", "'a.'"), ("$", "'$'"), ("$.a", "'$.a'"),
    ("a[0]", "'a[0]'"), ("[0]", "'[0]'"), ("0", "'0'"), ("a.0", "'a.0'"), ("*", "'*'"), ("a.*", "'a.*'"),
    ("é.😀", "'é.😀'"), ("a b", "'a b'"), ('"', "quote"), ("\\", "backslash"), ("$delete", "'$delete'"),
    ("a" * 1024, "path of 1024 bytes"), ("a" * 1025, "path of 1025 bytes"), ("é" * 512, "path of 512 x é (1024 bytes)"),
    ("é" * 513, "path of 513 x é (1026 bytes)"), (_segments(32), "path of 32 segments"), (_segments(33), "path of 33 segments"),
    (_segments(300), "path of 300 segments"), (_segments(10000), "path of 10,000 segments"),
    (_segments(60000), "path of 60,000 segments"), (_segments(100000), "path of 100,000 segments"),
]
NON_STRING_PATHS = ["1", "null", "[]", "{}", "true", '["a","b"]']

LONG_PATH = j(dumps(_segments(100000)), "path of 100,000 segments")
DEEP_200 = j(nest("obj", 200, "1"), "object nested 200 deep")
paths = st.sampled_from(PATH_SPECS).map(lambda p: j(dumps(p[0]), p[1]))
any_paths = st.one_of(paths, st.sampled_from(NON_STRING_PATHS).map(lambda t: j(t, f"path {t}")))
path_texts = st.sampled_from(PATH_SPECS).map(lambda p: j(p[0], p[1]))   # as SQL text, not JSON

REDUCER_OPS = ["set", "unset", "merge", "append", "remove", "increment", "$delete"]
TRANSFORM_OPS = ["rename", "move", "set_default", "remove", "map_values", "wrap"]
UNKNOWN_OPS = ["", "SET", "delete", "noop", "copy", "$set", "set ", "x" * 300, "😀"]


@st.composite
def steps(draw, kind, big=True):
    """One step of a reducer rule (kind="reducer") or a transform (kind="transform")."""
    form = draw(st.sampled_from(["wellformed", "wellformed", "wellformed", "malformed", "weird"]))
    if form == "weird":
        t = draw(st.sampled_from(['"set"', "1", "null", "[]", '{"op":1}', '{"op":null}', '{}', '{"path":"a"}',
                                  '{"op":["set"]}', nest("obj", 200, "1", "op")]))
        return j(t, f"step {t if len(t) < 40 else 'op nested 200 deep'}")
    ops = REDUCER_OPS if kind == "reducer" else TRANSFORM_OPS
    if form == "wellformed":
        op = draw(st.sampled_from(ops))
    else:
        op = draw(st.sampled_from(ops + (TRANSFORM_OPS if kind == "reducer" else REDUCER_OPS) + UNKNOWN_OPS))
    fields = {"op": j(dumps(op), repr(op if len(op) < 20 else f"{op[:5]}…[{len(op)}]"))}
    p = draw(paths if form == "wellformed" else any_paths)
    value = draw(st.one_of(st.sampled_from(["1", '"x"', "{}", "[]", "null", "-1", "1e400", "-0"]).map(j), json_values(big=big)))
    if kind == "reducer":
        if op != "$delete":
            if op != "merge" or draw(st.booleans()):
                fields["path"] = p
            if op == "unset":
                pass
            elif draw(st.booleans()):
                fields["from"] = draw(paths if form == "wellformed" else any_paths)
            else:
                fields["value"] = value
            if op == "remove":
                fields["key"] = draw(st.sampled_from(["id", "", "a.b", "😀"]).map(lambda k: j(dumps(k), repr(k))))
    else:
        if op in ("rename", "move"):
            fields["from"] = p
            fields["to"] = draw(paths if form == "wellformed" else any_paths)
        elif op == "set_default":
            fields["path"] = p
            fields["value"] = value
        elif op == "remove":
            fields["path"] = p
        elif op == "map_values":
            fields["path"] = p
            n = draw(st.sampled_from([0, 1, 2, 1000]))
            fields["map"] = j("{" + ",".join(f'"v{i}":"w{i}"' for i in range(n)) + "}", f"map of {n} values")
        elif op == "wrap":
            fields["path"] = p
            fields["into"] = draw(st.sampled_from(["value", "", ".", "a.b", "k" * 300]).map(lambda k: j(dumps(k), repr(k[:20]))))
    if form != "wellformed":
        # drop or add an operand
        if fields and draw(st.booleans()):
            drop = draw(st.sampled_from(sorted(fields)))
            del fields[drop]
        if draw(st.booleans()):
            fields["extra"] = j("1")
    text = "{" + ",".join(dumps(k) + ":" + v for k, v in fields.items()) + "}"
    desc = "{" + ", ".join(f"{k}: {getattr(v, 'desc', v)}" for k, v in fields.items()) + "}"
    return j(text, desc)


STEP_COUNTS = [1, 0, 2, 3, 256, 257, 300]


@st.composite
def programs(draw, kind):
    """A reducer rule or a transform: an array of steps (or something that is not)."""
    top = draw(st.sampled_from(["array", "array", "array", "array", "not_array"]))
    if top == "not_array":
        t = draw(st.sampled_from(["{}", '"set"', "1", "null", '{"op":"set","path":"a","value":1}', "[[]]",
                                  nest("arr", 200, "{}"), nest("arr", 65, '{"op":"$delete"}')]))
        return j(t, f"program {t if len(t) < 60 else 'nested deep'}")
    n = draw(st.sampled_from(STEP_COUNTS))
    distinct = draw(st.lists(steps(kind, big=n <= 3), min_size=1, max_size=3))
    chosen = [distinct[i % len(distinct)] for i in range(n)]
    text = "[" + ",".join(chosen) + "]"
    if n <= 3:
        desc = "[" + ", ".join(s.desc for s in chosen) + "]"
    else:
        desc = f"{n} steps cycling [" + ", ".join(s.desc for s in distinct) + "]"
    return j(text, desc)


# --- JSON Schemas --------------------------------------------------------------------------

LOOPS = [
    '{"$ref":"#"}',
    '{"$ref":"#/definitions/a","definitions":{"a":{"$ref":"#/definitions/a"}}}',
    '{"$ref":"#/definitions/a","definitions":{"a":{"$ref":"#/definitions/b"},"b":{"$ref":"#/definitions/a"}}}',
    '{"$defs":{"a":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"}',
    '{"type":"object","properties":{"a":{"$ref":"#"}}}',
    '{"type":"object","additionalProperties":{"$ref":"#"}}',
    '{"anyOf":[{"$ref":"#"},{"type":"object"}]}',
    '{"allOf":[{"$ref":"#"}]}',
    '{"not":{"$ref":"#"}}',
    '{"$ref":"#/nope"}',
    '{"$ref":""}',
    '{"$ref":1}',
    '{"$ref":"#/definitions/"}',
    '{"$ref":"#/properties/a","properties":{"a":{"$ref":"#/properties/a"}}}',
    '{"$ref":"http://127.0.0.1:9/schema.json"}',
    '{"$ref":"http://schemas.invalid/x.json"}',
    '{"$ref":"urn:uuid:00000000-0000-0000-0000-000000000000"}',
    '{"$ref":"file:///etc/passwd"}',
    '{"$id":"http://127.0.0.1:9/a","$ref":"b.json"}',
    '{"$schema":"http://127.0.0.1:9/meta","type":"object"}',
    '{"$schema":"not a uri"}',
    '{"$schema":"http://json-schema.org/draft-04/schema#","$recursiveRef":"#"}',
    '{"$dynamicAnchor":"a","$dynamicRef":"#a"}',
    '{"$recursiveAnchor":true,"$recursiveRef":"#"}',
]
PATTERNS = ["a", "", "(", "[z-a]", "\\p{Invalid}", "(?=a)a", "(a)\\1", "(a|aa)*$", "^(a+)+$", "a{1000}{1000}",
            "(a{1,1000}){1,1000}", "\\", "[[:alpha:]]", "(?<n>a)\\k<n>", "a" * 100000, "(" * 1000 + ")" * 1000,
            "x*" * 5000, "é+😀*"]


@st.composite
def schemas(draw):
    """A JSON Schema (as text) that a careless compiler or validator might choke on."""
    shape = draw(st.sampled_from(["plain", "loop", "pattern", "deep", "numbers", "wide", "odd", "format", "not_object"]))
    if shape == "plain":
        t = '{"type":"object","required":["amount"],"properties":{"amount":{"type":"number"}}}'
        return j(t, "a plain schema")
    if shape == "loop":
        t = draw(st.sampled_from(LOOPS))
        return j(t, f"schema {t}")
    if shape == "pattern":
        pat = draw(st.sampled_from(PATTERNS))
        where = draw(st.sampled_from(["pattern", "patternProperties", "propertyNames"]))
        if where == "pattern":
            t = '{"type":"object","properties":{"s":{"type":"string","pattern":' + dumps(pat) + '}}}'
        elif where == "patternProperties":
            t = '{"type":"object","patternProperties":{' + dumps(pat) + ':{"type":"string"}}}'
        else:
            t = '{"type":"object","propertyNames":{"pattern":' + dumps(pat) + '}}'
        return j(t, f"schema with {where} {pat[:30]!r}{'…' if len(pat) > 30 else ''} ({len(pat)} chars)")
    if shape == "deep":
        kw = draw(st.sampled_from(["properties", "items", "allOf", "not", "anyOf", "additionalProperties"]))
        depth = draw(st.sampled_from([10, 63, 64, 65, 129, 200, 1000, 3000]))
        if kw == "properties":
            t = '{"type":"object","properties":{"a":' * depth + "{}" + "}}" * depth
        elif kw in ("allOf", "anyOf"):
            t = ('{"' + kw + '":[') * depth + "{}" + "]}" * depth
        else:
            t = ('{"' + kw + '":') * depth + "{}" + "}" * depth
        return j(t, f"schema nested {depth} deep through {kw}")
    if shape == "numbers":
        t = draw(st.sampled_from([
            '{"properties":{"n":{"maximum":1e400}}}', '{"properties":{"n":{"minimum":-1e400}}}',
            '{"properties":{"n":{"multipleOf":1e-400}}}', '{"properties":{"n":{"multipleOf":0}}}',
            '{"properties":{"n":{"multipleOf":-1}}}', '{"properties":{"n":{"multipleOf":1e400}}}',
            '{"properties":{"s":{"minLength":-1}}}', '{"properties":{"s":{"maxLength":1e400}}}',
            '{"properties":{"s":{"maxLength":18446744073709551616}}}', '{"maxProperties":-0}',
            '{"properties":{"a":{"maxItems":9223372036854775808}}}', '{"properties":{"a":{"minItems":1.5}}}',
            '{"properties":{"n":{"exclusiveMaximum":true}}}', '{"properties":{"n":{"const":1e400}}}',
            '{"properties":{"n":{"enum":[1e400,-0,1' + "0" * 1000 + ']}}}']))
        return j(t, f"schema {t[:80]}")
    if shape == "wide":
        n = draw(st.sampled_from([1000, 20000]))
        kw = draw(st.sampled_from(["properties", "enum", "required", "allOf"]))
        if kw == "properties":
            t = '{"properties":{' + ",".join(f'"p{i}":{{"type":"string"}}' for i in range(n)) + "}}"
        elif kw == "enum":
            t = '{"enum":[' + ",".join(f'{{"k":{i}}}' for i in range(n)) + "]}"
        elif kw == "required":
            t = '{"required":[' + ",".join(f'"p{i}"' for i in range(n)) + "]}"
        else:
            t = '{"allOf":[' + ",".join(['{"type":"object"}'] * n) + "]}"
        return j(t, f"schema with {n} {kw}")
    if shape == "odd":
        t = draw(st.sampled_from([
            '{"type":"nonsense"}', '{"type":[]}', '{"type":1}', '{"required":"amount"}', '{"required":[1]}',
            '{"properties":[]}', '{"properties":{"a":1}}', '{"items":1}', '{"enum":[]}', '{"allOf":[]}',
            '{"dependentSchemas":{"a":1}}', '{"if":{"const":1},"then":false,"else":{"$ref":"#"}}',
            '{"unevaluatedProperties":false,"properties":{"a":{}}}', '{"contains":{"$ref":"#"}}',
            '{"contentEncoding":"base64","contentMediaType":"application/json","contentSchema":{"$ref":"#"}}',
            '{"$comment":"' + "c" * 70000 + '"}', '{"default":' + nest("obj", 200, "1") + "}",
            '{"examples":[' + nest("arr", 200, "1") + "]}", '{"\\u0000":1}', '{"":{"$ref":"#"}}']))
        return j(t, f"schema {t[:80]}")
    if shape == "format":
        fmt = draw(st.sampled_from(["email", "uri", "date-time", "ipv4", "ipv6", "regex", "hostname", "idn-email",
                                    "uuid", "duration", "json-pointer", "relative-json-pointer", "iri", "unknown-format"]))
        t = '{"properties":{"s":{"type":"string","format":' + dumps(fmt) + "}}}"
        return j(t, f"schema with format {fmt}")
    t = draw(st.sampled_from(["true", "false", "[]", '"x"', "1", "null", "[{}]"]))
    return j(t, f"schema {t}")


@st.composite
def schema_payloads(draw):
    """Payloads that exercise the schemas: long strings, regex-hostile text, numbers, depth."""
    kind = draw(st.sampled_from(["plain", "string", "number", "deep", "any"]))
    if kind == "plain":
        return j('{"amount":1}', "{amount: 1}")
    if kind == "string":
        s = draw(st.sampled_from(["a", "", "a" * 10000 + "b", "a" * 100000, "😀" * 1000, "(((", "x@y", "not-a-date"]))
        return j('{"s":' + dumps(s) + ',"amount":1,"a":' + dumps(s[:30]) + "}", f"{{s: {len(s)} chars {s[:10]!r}}}")
    if kind == "number":
        n = draw(st.sampled_from(NUMBERS))
        return j('{"n":' + n + ',"amount":' + n + "}", f"{{n: {_leaf_desc(n)}}}")
    if kind == "deep":
        d = draw(st.sampled_from([10, 64, 65, 129, 200, 1000]))
        return j('{"amount":1,"a":' + nest("obj", d, "1") + "}", f"{{amount: 1, a: object nested {d} deep}}")
    return draw(objects)


# --- feed cursors --------------------------------------------------------------------------

BOGUS_CURSORS = [
    None, "", " ", "x", "-", "0", "0000000000000000-0000000000000000", "0000000000000000-0000000000000001",
    "ffffffffffffffff-ffffffffffffffff", "ffffffffffffffff-0000000000000001", "7fffffffffffffff-7fffffffffffffff",
    "8000000000000000-0000000000000000", "0000000000000001-8000000000000000", "FFFFFFFFFFFFFFFF-FFFFFFFFFFFFFFFF",
    "000000000000000g-0000000000000000", "00000000000000000-0000000000000000", "0000000000000000-",
    "-0000000000000000", "0000000000000000_0000000000000000", "0000000000000000-0000000000000000-0000000000000000",
    "+000000000000001-+000000000000001", "0000000000000001--000000000000001", "-000000000000001-0000000000000001",
    " 000000000000001-0000000000000001", "１２３４５６７８９０１２３４５６-0000000000000000",
    "٠٠٠٠٠٠٠٠٠٠٠٠٠٠٠٠-٠٠٠٠٠٠٠٠٠٠٠٠٠٠٠٠", "0x000000000000001-0x00000000000001", "é" * 16 + "-" + "é" * 16,
    "9223372036854775807-9223372036854775807", "a" * 100000,
]


def cursors(known=()):
    """A bogus cursor, or one the feed returned (possibly nudged past the end)."""
    derived = []
    for c in known:
        x, _, p = c.partition("-")
        try:
            xi, pi = int(x, 16), int(p, 16)
        except ValueError:
            continue
        derived += [c, f"{xi + 1:016x}-{pi:016x}", f"{xi:016x}-{pi + 1:016x}", f"{xi + 1000:016x}-{0:016x}", c.upper()]
    return st.sampled_from(BOGUS_CURSORS + derived).map(lambda c: j(c, f"{c[:20]!r}…[{len(c)}]") if isinstance(c, str) and len(c) > 60 else c)


# --- webhook URLs (never a reachable host: loopback port 9 or unresolvable names) ----------

URLS = [
    "http://127.0.0.1:9/hook", "https://127.0.0.1:9/hook", "http://127.0.0.1:9/" + "p" * 5000, "", "not a url",
    "http://", "ftp://127.0.0.1:9/", "file:///etc/passwd", "javascript:alert(1)", "http://127.0.0.1:99999/",
    "http://127.0.0.1:0/", "http://u:p@127.0.0.1:9/", "http://[::1]:9/", "http://[::ffff:127.0.0.1]:9/",
    "http://[::ffff:7f00:1]:9/", "http://0.0.0.0:9/", "http://127.1:9/", "http://2130706433:9/",
    "http://0x7f000001:9/", "http://[64:ff9b::7f00:1]:9/", "http://hooks.invalid:9/", "http://a..invalid/",
    "http://" + "a" * 300 + ".invalid/", "http://127.0.0.1:9/\u0000".replace("\u0000", "%00"), "HTTP://127.0.0.1:9/",
    "http://127.0.0.1:9/😀", "http:// 127.0.0.1:9/", "http://127.0.0.1:9/#frag", "http://[::1", "http://[zz::1]:9/",
]
urls = st.sampled_from(URLS).map(lambda u: j(u, f"{u[:40]!r}…[{len(u)}]") if len(u) > 60 else u)


# --- append batches ------------------------------------------------------------------------

OCCURRED = ["2024-05-01T12:30:00Z", "2024-05-01T14:30:00.250+02:00", "", "now", "infinity", "-infinity",
            "0000-01-01T00:00:00Z", "9999-12-31T23:59:60Z", "10000-01-01T00:00:00Z", "294277-01-01T00:00:00Z",
            "-4713-01-01T00:00:00Z", "2024-02-30T00:00:00Z", "2024-05-01T12:30:00+99:99", "2024-05-01t12:30:00z",
            "2024-05-01T12:30:00.1234567890123Z", "2024-05-01 12:30:00Z"]


@st.composite
def metadatas(draw, big=True):
    """Event metadata: the lifted keys with right and wrong values, or any JSON."""
    kind = draw(st.sampled_from(["lifted", "json", "empty"]))
    if kind == "empty":
        return j("{}")
    if kind == "json":
        return draw(json_values(big=big))
    fields = {}
    if draw(st.booleans()):
        fields["correlation_id"] = draw(st.sampled_from(['"6f1c3c1e-0c1a-4d7e-9a55-111111111111"', '"x"', "1", "null",
                                                         '"00000000-0000-0000-0000-000000000000"', "{}", '""',
                                                         '"6F1C3C1E0C1A4D7E9A55111111111111"', '"{6f1c3c1e-0c1a-4d7e-9a55-111111111111}"']))
    if draw(st.booleans()):
        fields["causation_id"] = draw(st.sampled_from(['"6f1c3c1e-0c1a-4d7e-9a55-111111111111"', "[]", "true", '"urn:uuid:6f1c3c1e-0c1a-4d7e-9a55-111111111111"']))
    if draw(st.booleans()):
        fields["actor"] = draw(st.sampled_from(['"web"', '""', "1", "null", '"' + ("a" * 100000 if big else "a" * 300) + '"', "{}", '"😀"']))
    if draw(st.booleans()):
        fields["occurred_at"] = draw(st.sampled_from([dumps(o) for o in OCCURRED] + ["1", "null", "[]"]))
    if draw(st.booleans()):
        fields["extra"] = draw(json_values(big=big))
    text = "{" + ",".join(dumps(k) + ":" + v for k, v in fields.items()) + "}"
    return j(text, "{" + ", ".join(f"{k}: {getattr(v, 'desc', None) or (v if len(v) < 50 else v[:20] + '…')}" for k, v in fields.items()) + "}")


@st.composite
def batch_elements(draw, big=True):
    form = draw(st.sampled_from(["good", "good", "good", "odd", "weird"]))
    if form == "weird":
        t = draw(st.sampled_from(["null", "1", '"e"', "[]", "{}", '{"event_type":"E"}', '{"payload":{}}',
                                  '{"event_type":"E","payload":{},"typo":1}', '{"event_type":null,"payload":{}}',
                                  '{"event_type":1,"payload":{}}', '{"event_type":"E","payload":[]}']))
        return j(t, t)
    fields = {"event_type": j(dumps(draw(st.one_of(st.just("E"), plain_names, names.filter(lambda x: x is not None)))))}
    fields["event_type"].desc = short_text(fields["event_type"])
    fields["payload"] = draw(json_values(top_object=form == "good", big=big))
    if draw(st.booleans()):
        fields["metadata"] = draw(metadatas(big=big))
    if draw(st.integers(0, 3)) == 0:
        fields["event_id"] = draw(st.sampled_from(['"6f1c3c1e-0c1a-4d7e-9a55-111111111111"', '"00000000-0000-0000-0000-000000000000"',
                                                   '"x"', "1", "null", '"ffffffff-ffff-ffff-ffff-ffffffffffff"']))
    if draw(st.integers(0, 3)) == 0:
        fields["schema_version"] = draw(st.sampled_from(["1", "2", "0", "-1", "null", '"1"', "1.5", "1.0", "2147483647",
                                                         "2147483648", "9223372036854775808", "1e400", "-0", "1e2"]))
    text = "{" + ",".join(dumps(k) + ":" + v for k, v in fields.items()) + "}"
    desc = "{" + ", ".join(f"{k}: {getattr(v, 'desc', None) or short_text(v)}" for k, v in fields.items()) + "}"
    return j(text, desc)


def short_text(v):
    return v if len(v) <= 40 else f"{v[:20]}…[{len(v)} chars]"


BATCH_SIZES = [1, 2, 3, 0, 100, 10000, 10001]


@st.composite
def batches(draw):
    """The events argument of append_events: an array of elements (cycled to the size drawn),
    or something that is not an array."""
    if draw(st.integers(0, 5)) == 0:
        t = draw(st.sampled_from(["{}", "null", '"x"', "1", "[[]]", nest("arr", 200, "{}"), '{"event_type":"E","payload":{}}']))
        return j(t, f"events {short_text(t)}")
    n = draw(st.sampled_from(BATCH_SIZES))
    distinct = draw(st.lists(batch_elements(big=n <= 3), min_size=1, max_size=3))
    chosen = [distinct[i % len(distinct)] for i in range(n)]
    desc = ("[" + ", ".join(e.desc for e in chosen) + "]") if n <= 3 else \
        f"{n} events cycling [" + ", ".join(e.desc for e in distinct) + "]"
    return j("[" + ",".join(chosen) + "]", desc)
