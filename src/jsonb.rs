//! jsonb values in and out of Rust, held to `eventstore.max_json_depth`.
//!
//! Reading walks PostgreSQL's binary jsonb with its own iterator (no text round trip, no
//! recursion: serde's parser stops at 128 levels, and a deep value would otherwise be a crash
//! waiting to happen), and refuses a value deeper than the limit with 22023 naming the path.
//! Writing checks the depth first, so that serialising never recurses past the limit either.

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::{IntoDatum, JsonB};
use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};
use crate::guc;
use crate::json::limits::{self, Segment, TooDeep};

/// The 22023 for a value nested deeper than the limit. `what` names the value (`payload`,
/// `events[2].metadata`), `deep` the place relative to it.
pub fn too_deep(what: &str, deep: &TooDeep) -> Error {
    let max = guc::max_json_depth();
    // an argument's name reads as the start of the path; a description does not
    let at = if what.contains(' ') {
        format!("the value at {}", if deep.path.is_empty() { "the top" } else { deep.path.trim_start_matches('.') })
    } else {
        format!("{what}{}", deep.path)
    };
    Error::invalid(format!("{what} is nested too deeply"))
        .detail(format!("{at} is at depth {}; eventstore.max_json_depth is {max}", deep.depth))
        .hint("Flatten the document, or ask a superuser to raise eventstore.max_json_depth.")
}

/// Checks a Rust value against the limit.
pub fn check_value(what: &str, value: &Value) -> Result<()> {
    match limits::too_deep(value, guc::max_json_depth()) {
        None => Ok(()),
        Some(deep) => Err(too_deep(what, &deep)),
    }
}

/// Checks a jsonb datum against the limit without converting it.
pub fn check(what: &str, datum: pg_sys::Datum) -> Result<()> {
    walk(what, datum, guc::max_json_depth(), &mut NoBuild)
}

/// A jsonb datum as a serde value, refused when it is deeper than the limit.
pub fn to_value(what: &str, datum: pg_sys::Datum) -> Result<Value> {
    to_value_within(what, datum, 0, |_| None)
}

/// The same, naming the value only when it is too deep (a replay converts a payload per
/// event and names it in none of them).
pub fn to_value_named(what: impl Fn() -> String, datum: pg_sys::Datum) -> Result<Value> {
    let mut build = Build::default();
    match walk_raw(datum, guc::max_json_depth(), &mut build) {
        Ok(()) => Ok(build.root.unwrap_or(Value::Null)),
        Err(deep) => Err(too_deep(&what(), &deep)),
    }
}

/// The same for a document that holds values which the limit applies to `levels` further
/// down (a batch of events: the array and each event object come on top of their payloads).
/// Those values must be checked on their own with `check_value`.
/// An error names the value the limit is for when the place is one (`rebase` turns the path
/// from the document's root into that value's name, the path inside it and the levels above
/// it), else the whole document.
pub fn to_value_within(
    what: &str,
    datum: pg_sys::Datum,
    levels: usize,
    rebase: impl Fn(&str) -> Option<(String, String)>,
) -> Result<Value> {
    let mut build = Build::default();
    match walk_raw(datum, guc::max_json_depth() + levels, &mut build) {
        Ok(()) => Ok(build.root.unwrap_or(Value::Null)),
        Err(deep) => Err(match rebase(&deep.path) {
            Some((inner, path)) => too_deep(&inner, &TooDeep { path, depth: deep.depth - levels }),
            None => too_deep(what, &deep),
        }),
    }
}

/// A serde value as a jsonb datum (in the current memory context), refused when deeper than
/// the limit.
pub fn from_value(what: &str, value: Value) -> Result<pg_sys::Datum> {
    check_value(what, &value)?;
    Ok(JsonB(value).into_datum().expect("jsonb_in returns a value"))
}

/// What the walk does with the tokens it meets.
trait Sink {
    fn begin(&mut self, object: bool);
    fn key(&mut self, key: &str);
    fn scalar(&mut self, value: &pg_sys::JsonbValue);
    fn end(&mut self);
}

/// Only checks the depth.
struct NoBuild;

impl Sink for NoBuild {
    fn begin(&mut self, _: bool) {}
    fn key(&mut self, _: &str) {}
    fn scalar(&mut self, _: &pg_sys::JsonbValue) {}
    fn end(&mut self) {}
}

/// Builds the serde value, one container at a time.
#[derive(Default)]
struct Build {
    open: Vec<(Value, Option<String>)>,
    key: Option<String>,
    root: Option<Value>,
}

impl Build {
    fn put(&mut self, value: Value) {
        match self.open.last_mut() {
            None => self.root = Some(value),
            Some((Value::Array(items), _)) => items.push(value),
            Some((Value::Object(map), _)) => {
                map.insert(self.key.take().unwrap_or_default(), value);
            }
            Some(_) => unreachable!("only containers are open"),
        }
    }
}

impl Sink for Build {
    fn begin(&mut self, object: bool) {
        let container = if object { Value::Object(Map::new()) } else { Value::Array(Vec::new()) };
        self.open.push((container, self.key.take()));
    }

    fn key(&mut self, key: &str) {
        self.key = Some(key.to_owned());
    }

    fn scalar(&mut self, value: &pg_sys::JsonbValue) {
        let value = unsafe { scalar(value) };
        self.put(value);
    }

    fn end(&mut self) {
        let (container, key) = self.open.pop().expect("an open container");
        self.key = key;
        self.put(container);
    }
}

/// A jsonb scalar as a serde value.
unsafe fn scalar(v: &pg_sys::JsonbValue) -> Value {
    unsafe {
        match v.type_ {
            pg_sys::jbvType::jbvNull => Value::Null,
            pg_sys::jbvType::jbvBool => Value::Bool(v.val.boolean),
            pg_sys::jbvType::jbvString => Value::String(text(v).to_owned()),
            pg_sys::jbvType::jbvNumeric => {
                let out = pgrx::direct_function_call::<&CStr>(pg_sys::numeric_out, &[Some(pg_sys::Datum::from(v.val.numeric))])
                    .expect("numeric_out returns text");
                // numeric_out writes plain JSON numbers (jsonb holds no NaN or infinity)
                let text = out.to_str().unwrap_or("0");
                Value::Number(text.parse::<Number>().unwrap_or_else(|_| Number::from(0)))
            }
            // jsonb on disk holds nothing else
            _ => Value::Null,
        }
    }
}

/// The text of a jsonb string or key (UTF-8: the database encoding eventstore requires).
unsafe fn text(v: &pg_sys::JsonbValue) -> &str {
    unsafe {
        let bytes = std::slice::from_raw_parts(v.val.string.val as *const u8, v.val.string.len as usize);
        std::str::from_utf8(bytes).unwrap_or("\u{FFFD}")
    }
}

/// Where the walk is inside one open container: the key it is under (objects) or the index of
/// the element (arrays), kept as the jsonb's own bytes until a message needs them.
enum Place {
    Key(*const u8, usize),
    Index(usize),
}

fn walk(what: &str, datum: pg_sys::Datum, max: usize, sink: &mut impl Sink) -> Result<()> {
    walk_raw(datum, max, sink).map_err(|deep| too_deep(what, &deep))
}

fn walk_raw(datum: pg_sys::Datum, max: usize, sink: &mut impl Sink) -> std::result::Result<(), TooDeep> {
    unsafe {
        let jsonb = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) as *mut pg_sys::Jsonb;
        walk_container(&raw mut (*jsonb).root, max, sink)
    }
}

/// # Safety
/// `container` is a jsonb container that stays where it is during the walk.
unsafe fn walk_container(container: *mut pg_sys::JsonbContainer, max: usize, sink: &mut impl Sink) -> std::result::Result<(), TooDeep> {
    use pg_sys::JsonbIteratorToken::*;
    unsafe {
        let mut iterator = pg_sys::JsonbIteratorInit(container);
        let mut value: pg_sys::JsonbValue = std::mem::zeroed();
        // one entry per open container; a raw scalar's pseudo-array is not counted
        let mut places: Vec<Place> = Vec::new();
        let mut raw_scalar = false;
        loop {
            match pg_sys::JsonbIteratorNext(&mut iterator, &mut value, false) {
                WJB_DONE => break,
                token @ (WJB_BEGIN_ARRAY | WJB_BEGIN_OBJECT) => {
                    if token == WJB_BEGIN_ARRAY && value.val.array.rawScalar {
                        raw_scalar = true;
                        continue;
                    }
                    if places.len() + 1 > max {
                        return Err(TooDeep { path: path_of(&places), depth: places.len() + 1 });
                    }
                    sink.begin(token == WJB_BEGIN_OBJECT);
                    places.push(if token == WJB_BEGIN_OBJECT { Place::Key(std::ptr::null(), 0) } else { Place::Index(0) });
                }
                WJB_KEY => {
                    if let Some(place) = places.last_mut() {
                        *place = Place::Key(value.val.string.val as *const u8, value.val.string.len as usize);
                    }
                    sink.key(text(&value));
                }
                WJB_VALUE | WJB_ELEM => {
                    sink.scalar(&value);
                    advance(&mut places);
                }
                WJB_END_ARRAY if raw_scalar && places.is_empty() => raw_scalar = false,
                WJB_END_ARRAY | WJB_END_OBJECT => {
                    places.pop();
                    sink.end();
                    advance(&mut places);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// After an element of an array: the next index.
fn advance(places: &mut [Place]) {
    if let Some(Place::Index(i)) = places.last_mut() {
        *i += 1;
    }
}

fn path_of(places: &[Place]) -> String {
    limits::format_path(places.iter().map(|place| match place {
        Place::Key(ptr, len) => {
            let bytes = if ptr.is_null() { &[][..] } else { unsafe { std::slice::from_raw_parts(*ptr, *len) } };
            Segment::Key(std::str::from_utf8(bytes).unwrap_or("?"))
        }
        Place::Index(i) => Segment::Index(*i),
    }))
}

/// A payload read in place as a merge patch for a replay read newest first
/// (src/json/underlay.rs): members are visited without converting them, and only the values
/// the state ends up with are converted. `Err` means some value is deeper than the limit; the
/// caller converts the payload whole to name the place.
pub struct InPlace {
    /// a scalar, or a container (`jbvBinary`) inside the datum
    value: pg_sys::JsonbValue,
    /// how deep a container here is (the payload's own object is 1)
    depth: usize,
    max: usize,
}

/// A value deeper than `eventstore.max_json_depth`, somewhere in the payload.
#[derive(Debug)]
pub struct Deep;

impl InPlace {
    /// Calls `f` with the payload in `datum`; a toasted or short-header datum is detoasted
    /// into a copy that is freed when `f` returns.
    ///
    /// # Safety
    /// `datum` is a jsonb that stays where it is while `f` runs; nothing `f` returns points into it.
    pub unsafe fn with_payload<R>(datum: pg_sys::Datum, f: impl FnOnce(InPlace) -> R) -> R {
        unsafe {
            let stored = datum.cast_mut_ptr::<pg_sys::varlena>();
            // a plain 4-byte header is read where it is; anything else is detoasted (a short
            // header leaves the container unaligned)
            let jsonb = if pgrx::varlena::varatt_is_4b_u(stored) { stored } else { pg_sys::pg_detoast_datum(stored) } as *mut pg_sys::Jsonb;
            let root = &raw mut (*jsonb).root;
            let mut value: pg_sys::JsonbValue = std::mem::zeroed();
            if (*root).header & pg_sys::JB_FSCALAR != 0 {
                // a raw scalar is stored as a one-element array
                pg_sys::JsonbExtractScalar(root, &mut value);
            } else {
                value.type_ = pg_sys::jbvType::jbvBinary;
                value.val.binary.data = root;
            }
            let result = f(InPlace { value, depth: 1, max: guc::max_json_depth() });
            if jsonb as *mut pg_sys::varlena != stored {
                pg_sys::pfree(jsonb.cast());
            }
            result
        }
    }

    fn container(&self) -> Option<*mut pg_sys::JsonbContainer> {
        (self.value.type_ == pg_sys::jbvType::jbvBinary).then(|| unsafe { self.value.val.binary.data })
    }
}

impl crate::json::Patch for InPlace {
    type Error = Deep;

    fn is_null(&self) -> bool {
        self.value.type_ == pg_sys::jbvType::jbvNull
    }

    fn is_object(&self) -> bool {
        self.container().is_some_and(|c| unsafe { (*c).header } & pg_sys::JB_FOBJECT != 0)
    }

    fn for_each_member(&self, each: &mut dyn FnMut(&str, Self) -> std::result::Result<(), Deep>) -> std::result::Result<(), Deep> {
        let Some(container) = self.container().filter(|_| self.is_object()) else { return Ok(()) };
        if self.depth > self.max {
            return Err(Deep);
        }
        // SAFETY: the container is an object inside the datum `with_payload` holds
        unsafe {
            object_members(container, |key, value| each(key, InPlace { value, depth: self.depth + 1, max: self.max }))
        }
    }

    fn to_value(&self) -> std::result::Result<Value, Deep> {
        let Some(container) = self.container() else { return Ok(unsafe { scalar(&self.value) }) };
        let mut build = Build::default();
        // the walk counts this container as its first level
        unsafe { walk_container(container, (self.max + 1).saturating_sub(self.depth), &mut build) }.map_err(|_| Deep)?;
        Ok(build.root.unwrap_or(Value::Null))
    }
}

// The on-disk layout of a jsonb container (PostgreSQL's src/include/utils/jsonb.h, the same
// since 9.4): a header word with the count and kind, one JEntry word per key and per value
// (keys first), then their data. A JEntry holds the kind and either the length or, every 32nd
// entry, the end offset of its data. Numerics and containers start 4-byte aligned.
const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
const JENTRY_TYPEMASK: u32 = 0x7000_0000;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;
const JENTRY_ISNUMERIC: u32 = 0x1000_0000;
const JENTRY_ISBOOL_FALSE: u32 = 0x2000_0000;
const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
const JENTRY_ISNULL: u32 = 0x4000_0000;
const JENTRY_ISCONTAINER: u32 = 0x5000_0000;

/// Calls `each` with every key and value of an object container, in stored order, read from
/// its bytes: a call into PostgreSQL per token (with pgrx's guard around each) cost more than
/// the rest of a replay. Nested containers come as `jbvBinary` values, unread.
///
/// # Safety
/// `container` is a jsonb object container, 4-byte aligned, that stays where it is meanwhile.
unsafe fn object_members<E>(
    container: *const pg_sys::JsonbContainer,
    mut each: impl FnMut(&str, pg_sys::JsonbValue) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    unsafe {
        let count = ((*container).header & pg_sys::JB_CMASK) as usize;
        let entries = (container as *const u8).add(size_of::<u32>()) as *const u32;
        let data = entries.add(2 * count) as *const u8;
        // where entry `i` ends, given where it starts
        let end = |i: usize, start: u32| {
            let entry = *entries.add(i);
            if entry & JENTRY_HAS_OFF != 0 { entry & JENTRY_OFFLENMASK } else { start + (entry & JENTRY_OFFLENMASK) }
        };
        let mut value_start = 0;
        for i in 0..count {
            value_start = end(i, value_start);
        }
        let mut key_start = 0;
        for i in 0..count {
            let key_end = end(i, key_start);
            let bytes = std::slice::from_raw_parts(data.add(key_start as usize), (key_end - key_start) as usize);
            let key = std::str::from_utf8(bytes).unwrap_or("\u{FFFD}");
            let value_end = end(count + i, value_start);
            let mut value: pg_sys::JsonbValue = std::mem::zeroed();
            let aligned = (value_start + 3) & !3;
            match *entries.add(count + i) & JENTRY_TYPEMASK {
                JENTRY_ISNUMERIC => {
                    value.type_ = pg_sys::jbvType::jbvNumeric;
                    value.val.numeric = data.add(aligned as usize) as pg_sys::Numeric;
                }
                JENTRY_ISBOOL_FALSE | JENTRY_ISBOOL_TRUE => {
                    value.type_ = pg_sys::jbvType::jbvBool;
                    value.val.boolean = *entries.add(count + i) & JENTRY_TYPEMASK == JENTRY_ISBOOL_TRUE;
                }
                JENTRY_ISNULL => value.type_ = pg_sys::jbvType::jbvNull,
                JENTRY_ISCONTAINER => {
                    value.type_ = pg_sys::jbvType::jbvBinary;
                    value.val.binary.data = data.add(aligned as usize) as *mut pg_sys::JsonbContainer;
                    value.val.binary.len = (value_end - aligned) as i32;
                }
                _ => {
                    value.type_ = pg_sys::jbvType::jbvString;
                    value.val.string.val = data.add(value_start as usize) as *mut std::ffi::c_char;
                    value.val.string.len = (value_end - value_start) as i32;
                }
            }
            each(key, value)?;
            key_start = key_end;
            value_start = value_end;
        }
        Ok(())
    }
}
