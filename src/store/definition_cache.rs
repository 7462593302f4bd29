//! Definitions that shape events and state, loaded per tenant and cached per backend
//! (src/cache.rs): aggregates with their reducers, event schemas, upcaster chains.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::plans::{Statement, run};
use crate::cache::Memo;
use crate::error::{Error, Result};
use crate::json::{ReducerProgram, TransformProgram};

/// How one event type changes the state of an aggregate type.
pub enum Reducer {
    Rule(ReducerProgram),
    /// A SQL function `(state jsonb, event eventstore.event) -> jsonb`, by its (qualified) name,
    /// and the role that defined it, which it runs as.
    Handler(String, pg_sys::Oid),
    /// A handler function that was dropped after it was registered (its oid): every use is an
    /// error (42883), never a silent fallback to the default reducer.
    Missing(u32),
}

/// An aggregate type: defined with `define_aggregate`, or the defaults (initial state `{}`,
/// merge patch for every event, no automatic snapshots).
pub struct Aggregate {
    pub defined: bool,
    pub initial_state: Value,
    pub snapshot_every: i64,
    pub keep_snapshots: i64,
    pub reducers: HashMap<String, Reducer>,
    /// Hash of everything a state depends on besides the events: initial state, reducers and
    /// the tenant's upcasters. Snapshots made with another hash are ignored.
    pub hash: String,
}

/// The upcaster chain of one event type: from_version -> (to_version, transform).
#[derive(Default)]
pub struct Upcasters {
    steps: BTreeMap<i32, (i32, TransformProgram)>,
}

impl Upcasters {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn has_step(&self, version: i32) -> bool {
        self.steps.contains_key(&version)
    }

    /// Upcasts a payload of `version` as far as the chain goes; returns the version reached.
    /// Fails (22023) only when a step would make the payload deeper than the limit.
    pub fn upcast(&self, mut version: i32, payload: &mut Value) -> Result<i32> {
        let max = crate::guc::max_json_depth();
        while let Some((to, program)) = self.steps.get(&version) {
            program.apply(payload, max).map_err(|deep| {
                crate::jsonb::too_deep(&format!("the payload upcast from version {version} to {to}"), &deep)
            })?;
            version = *to;
        }
        Ok(version)
    }
}

/// The registered JSON Schemas of one event type, compiled.
#[derive(Default)]
pub struct Schemas {
    pub versions: BTreeMap<i32, jsonschema::Validator>,
}

impl Schemas {
    pub fn latest(&self) -> Option<i32> {
        self.versions.keys().next_back().copied()
    }
}

static AGGREGATE: Statement = Statement {
    sql: "SELECT a.initial_state, a.snapshot_every::bigint, a.keep_snapshots::bigint
          FROM eventstore.aggregates a WHERE a.tenant_id = $1 AND a.aggregate_type = $2",
    args: &[TEXTOID, TEXTOID],
    volatile: false,
};

static REDUCERS: Statement = Statement {
    sql: "SELECT r.event_type, r.rule,
                 r.handler::text || (SELECT ' ' || md5(p.prosrc) FROM pg_proc p WHERE p.oid = r.handler),
                 (SELECT p.oid::regproc::text FROM pg_proc p WHERE p.oid = r.handler),
                 r.handler::oid,
                 -- read through to_jsonb: a 0.1.0 schema (before ALTER EXTENSION UPDATE) has no
                 -- run_as yet; its definitions, like the update's, run as the extension owner
                 coalesce((to_jsonb(r) ->> 'run_as')::oid,
                          (SELECT x.extowner FROM pg_catalog.pg_extension x WHERE x.extname = 'eventstore'))
          FROM eventstore.reducers r WHERE r.tenant_id = $1 AND r.aggregate_type = $2
          ORDER BY r.event_type",
    args: &[TEXTOID, TEXTOID],
    volatile: false,
};

static ALL_UPCASTERS: Statement = Statement {
    sql: "SELECT u.event_type, u.from_version, u.to_version, u.transform
          FROM eventstore.upcasters u WHERE u.tenant_id = $1
          ORDER BY u.event_type, u.from_version",
    args: &[TEXTOID],
    volatile: false,
};

static UPCASTERS: Statement = Statement {
    sql: "SELECT u.from_version, u.to_version, u.transform
          FROM eventstore.upcasters u WHERE u.tenant_id = $1 AND u.event_type = $2",
    args: &[TEXTOID, TEXTOID],
    volatile: false,
};

static SCHEMAS: Statement = Statement {
    sql: "SELECT s.schema_version, s.json_schema
          FROM eventstore.event_schemas s WHERE s.tenant_id = $1 AND s.event_type = $2",
    args: &[TEXTOID, TEXTOID],
    volatile: false,
};

static ANY_UPCASTER: Statement = Statement {
    sql: "SELECT EXISTS (SELECT 1 FROM eventstore.upcasters u WHERE u.tenant_id = $1)",
    args: &[TEXTOID],
    volatile: false,
};

thread_local! {
    static TENANTS_UPCASTING: Memo<String, bool> = Memo::new();
    static AGGREGATES: Memo<(String, String), Aggregate> = Memo::new();
    static UPCASTER_CHAINS: Memo<(String, String), Upcasters> = Memo::new();
    static SCHEMA_SETS: Memo<(String, String), Schemas> = Memo::new();
}

/// A stored definition that the current limits refuse (stored by an earlier version, or under
/// a higher limit): an error for the calls that need it, never a crash.
fn broken(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("stored {what} no longer compiles: {e}"))
        .hint("Register it again within the limits, or ask a superuser to raise eventstore.max_json_depth.")
}

/// A jsonb column of a definition row, within the limits.
fn json_column(row: &pgrx::spi::SpiHeapTupleData<'_>, ordinal: usize, what: &str) -> Result<Option<Value>> {
    row.get::<crate::datum::RawJsonb>(ordinal)?.map(|raw| raw.value(what)).transpose()
}

pub fn aggregate(tenant: &str, aggregate_type: &str) -> Result<Rc<Aggregate>> {
    let key = (tenant.to_owned(), aggregate_type.to_owned());
    AGGREGATES.with(|memo| memo.get(&key, || load_aggregate(tenant, aggregate_type)))
}

fn load_aggregate(tenant: &str, aggregate_type: &str) -> Result<Aggregate> {
    Spi::connect(|client| {
        let defined = run(client, &AGGREGATE, &[tenant.into(), aggregate_type.into()])?;
        let (defined, initial_state, snapshot_every, keep_snapshots) = if defined.is_empty() {
            (false, Value::Object(Default::default()), 0, 0)
        } else {
            let row = defined.first();
            let initial = row.get::<crate::datum::RawJsonb>(1)?.map(|raw| raw.value("the stored initial state")).transpose()?;
            let initial = initial.unwrap_or(Value::Object(Default::default()));
            (true, initial, row.get::<i64>(2)?.unwrap_or(100), row.get::<i64>(3)?.unwrap_or(3))
        };
        let mut hasher = Sha256::new();
        hasher.update(initial_state.to_string());
        let mut reducers = HashMap::new();
        for row in run(client, &REDUCERS, &[tenant.into(), aggregate_type.into()])? {
            let event_type: String = row.get(1)?.unwrap_or_default();
            let rule = json_column(&row, 2, &format!("reducer rule of event type {event_type}"))?;
            let handler: Option<String> = row.get(3)?;
            let handler_name: Option<String> = row.get(4)?;
            let handler_oid: Option<pg_sys::Oid> = row.get(5)?;
            let reducer = match (rule, handler, handler_oid) {
                (Some(rule), _, _) => {
                    hasher.update(format!("\0rule\0{event_type}\0{rule}"));
                    Reducer::Rule(ReducerProgram::compile(&rule).map_err(|e| broken("reducer rule", e))?)
                }
                (None, Some(handler), _) => {
                    hasher.update(format!("\0handler\0{event_type}\0{handler}"));
                    let run_as: Option<pg_sys::Oid> = row.get(6)?;
                    Reducer::Handler(handler_name.unwrap_or_default(), run_as.unwrap_or(pg_sys::InvalidOid))
                }
                (None, None, Some(oid)) => {
                    hasher.update(format!("\0missing\0{event_type}\0{}", oid.to_u32()));
                    Reducer::Missing(oid.to_u32())
                }
                (None, None, None) => continue,
            };
            reducers.insert(event_type, reducer);
        }
        for row in run(client, &ALL_UPCASTERS, &[tenant.into()])? {
            let (event_type, from, to): (Option<String>, Option<i32>, Option<i32>) = (row.get(1)?, row.get(2)?, row.get(3)?);
            let transform = json_column(&row, 4, "the stored upcaster")?.map(|t| t.to_string());
            hasher.update(format!(
                "\0upcaster\0{}\0{}\0{}\0{}",
                event_type.unwrap_or_default(),
                from.unwrap_or_default(),
                to.unwrap_or_default(),
                transform.unwrap_or_default()
            ));
        }
        let hash = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Aggregate { defined, initial_state, snapshot_every, keep_snapshots, reducers, hash })
    })
}

/// Whether the tenant has any upcaster, so reads of tenants without can skip looking per event.
pub fn tenant_upcasts(tenant: &str) -> Result<bool> {
    let key = tenant.to_owned();
    let any = TENANTS_UPCASTING.with(|memo| {
        memo.get(&key, || Spi::connect(|client| Ok(run(client, &ANY_UPCASTER, &[tenant.into()])?.first().get_one::<bool>()?.unwrap_or(false))))
    })?;
    Ok(*any)
}

pub fn upcasters(tenant: &str, event_type: &str) -> Result<Rc<Upcasters>> {
    let key = (tenant.to_owned(), event_type.to_owned());
    UPCASTER_CHAINS.with(|memo| {
        memo.get(&key, || {
            Spi::connect(|client| {
                let mut chain = Upcasters::default();
                for row in run(client, &UPCASTERS, &[tenant.into(), event_type.into()])? {
                    let from: i32 = row.get(1)?.unwrap_or_default();
                    let to: i32 = row.get(2)?.unwrap_or_default();
                    let transform = json_column(&row, 3, "the stored upcaster")?.unwrap_or(Value::Array(vec![]));
                    let program = TransformProgram::compile(&transform).map_err(|e| broken("upcaster", e))?;
                    chain.steps.insert(from, (to, program));
                }
                Ok(chain)
            })
        })
    })
}

pub fn schemas(tenant: &str, event_type: &str) -> Result<Rc<Schemas>> {
    let key = (tenant.to_owned(), event_type.to_owned());
    SCHEMA_SETS.with(|memo| {
        memo.get(&key, || {
            Spi::connect(|client| {
                let mut set = Schemas::default();
                for row in run(client, &SCHEMAS, &[tenant.into(), event_type.into()])? {
                    let version: i32 = row.get(1)?.unwrap_or_default();
                    let schema = json_column(&row, 2, "the stored JSON Schema")?.unwrap_or(Value::Bool(true));
                    let validator = jsonschema::validator_for(&schema).map_err(|e| broken("JSON Schema", e))?;
                    set.versions.insert(version, validator);
                }
                Ok(set)
            })
        })
    })
}
