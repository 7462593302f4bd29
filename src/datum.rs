//! A jsonb argument passed through untouched. pgrx's `JsonB` turns every argument into text and
//! parses it with serde (and back again to write it); an append only needs to know that the
//! payload is an object, which the jsonb header says, and hands the datum straight to SPI.

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::{FromDatum, IntoDatum};

/// How a Rust type that PostgreSQL sees as SQL type `$sql` is named in the generated SQL.
macro_rules! sql_type {
    ($name:ty, $sql:expr) => {
        unsafe impl SqlTranslatable for $name {
            const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!($name);
            const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
            const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal($sql));
            const RETURN_SQL: Result<ReturnsRef, ReturnsError> = Ok(ReturnsRef::One(SqlMappingRef::literal($sql)));
        }
    };
}

/// A jsonb value as PostgreSQL holds it (possibly toasted), valid for the current call.
#[derive(Debug, Clone, Copy)]
pub struct RawJsonb(pg_sys::Datum);

// jsonb container header flags (src/include/utils/jsonb.h)
const JB_CMASK: u32 = 0x0FFF_FFFF;
const JB_FSCALAR: u32 = 0x1000_0000;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FARRAY: u32 = 0x4000_0000;

/// The shape of a jsonb document's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// An object with this many keys.
    Object(u32),
    Array,
    Scalar,
}

impl RawJsonb {
    /// The root's shape, read from the header (detoasting only the value itself).
    pub fn root(&self) -> Root {
        unsafe {
            let varlena = self.0.cast_mut_ptr::<pg_sys::varlena>();
            let detoasted = pg_sys::pg_detoast_datum_packed(varlena);
            let data = pgrx::varlena::vardata_any(detoasted) as *const u8;
            let header = u32::from_ne_bytes(std::ptr::read_unaligned(data as *const [u8; 4]));
            if detoasted != varlena {
                pg_sys::pfree(detoasted.cast());
            }
            if header & JB_FSCALAR != 0 {
                Root::Scalar
            } else if header & JB_FOBJECT != 0 {
                Root::Object(header & JB_CMASK)
            } else {
                debug_assert!(header & JB_FARRAY != 0);
                Root::Array
            }
        }
    }

    /// The same value detoasted once, so that statements reading it many times do not each
    /// decompress it again.
    pub fn detoasted(self) -> RawJsonb {
        unsafe { RawJsonb(pg_sys::Datum::from(pg_sys::pg_detoast_datum(self.0.cast_mut_ptr()))) }
    }

    /// The value as serde JSON, refused (22023) when deeper than `eventstore.max_json_depth`.
    pub fn value(self, what: &str) -> crate::error::Result<serde_json::Value> {
        crate::jsonb::to_value(what, self.0)
    }

    /// Refused (22023) when deeper than `eventstore.max_json_depth`; nothing is converted.
    pub fn check_depth(self, what: &str) -> crate::error::Result<()> {
        crate::jsonb::check(what, self.0)
    }

    /// A serde value as jsonb (in the current memory context), refused when too deep.
    pub fn from_value(what: &str, value: serde_json::Value) -> crate::error::Result<RawJsonb> {
        crate::jsonb::from_value(what, value).map(RawJsonb)
    }

    pub fn datum(self) -> pg_sys::Datum {
        self.0
    }

    /// The value's text, as `jsonb_out` writes it.
    pub fn text(self) -> String {
        let out = unsafe { pgrx::direct_function_call::<&std::ffi::CStr>(pg_sys::jsonb_out, &[Some(self.0)]) };
        out.map(|t| t.to_string_lossy().into_owned()).unwrap_or_default()
    }
}


impl FromDatum for RawJsonb {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Self> {
        (!is_null).then_some(RawJsonb(datum))
    }
}

impl IntoDatum for RawJsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for RawJsonb {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or_else(|| panic!("argument {index} must not be null"))
    }
}

sql_type!(RawJsonb, "jsonb");

/// A `regprocedure` argument: a function by its signature, resolved by PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub struct RegProcedure(pub pg_sys::Oid);

impl FromDatum for RegProcedure {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Self> {
        (!is_null).then(|| RegProcedure(pg_sys::Oid::from(datum.value() as u32)))
    }
}

impl IntoDatum for RegProcedure {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0))
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::REGPROCEDUREOID
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for RegProcedure {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or_else(|| panic!("argument {index} must not be null"))
    }
}

sql_type!(RegProcedure, "regprocedure");

/// A composite row returned as the datum it already is (see `store::Row`), typed in SQL by
/// the composite type it belongs to.
macro_rules! composite_row {
    ($name:ident, $sql:literal) => {
        #[doc = concat!("A row of `", $sql, "`.")]
        pub struct $name(pub pg_sys::Datum);

        unsafe impl BoxRet for $name {
            unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
                unsafe { fcinfo.return_raw_datum(self.0) }
            }
        }

        sql_type!($name, $sql);
    };
}

composite_row!(AppendedRow, "eventstore.appended");

/// Rows of a composite type returned as a set all at once (`SFRM_Materialize`): the function
/// is called once and hands PostgreSQL a tuplestore. Returned one row per call instead (what
/// `SetOfIterator` does), a `SECURITY DEFINER` function with a pinned `search_path` sets and
/// restores that setting for every row, a quarter of a feed page's server time.
macro_rules! composite_rows {
    ($name:ident, $sql:literal) => {
        #[doc = concat!("Rows of `", $sql, "`, returned as a materialized set.")]
        pub struct $name(pub Vec<pg_sys::Datum>);

        unsafe impl BoxRet for $name {
            unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
                unsafe { materialize(fcinfo.as_mut_ptr(), &self.0) };
                fcinfo.return_null()
            }
        }

        // the functions that return these declare `RETURNS SETOF` in their own SQL (`#[pg_extern(sql = ...)]`)
        sql_type!($name, $sql);
    };
}

composite_rows!(EventRows, "eventstore.event");
composite_rows!(FeedRows, "eventstore.feed_event");

/// Puts composite datums of the function's result type into a tuplestore and hands it to the
/// caller as the function's result set.
///
/// # Safety
/// `fcinfo` is the call of a set-returning function whose rows are `rows`.
unsafe fn materialize(fcinfo: pg_sys::FunctionCallInfo, rows: &[pg_sys::Datum]) {
    unsafe {
        let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        let materialize = pg_sys::SetFunctionReturnMode::SFRM_Materialize as i32;
        if rsinfo.is_null() || (*rsinfo).type_ != pg_sys::NodeTag::T_ReturnSetInfo || (*rsinfo).allowedModes & materialize == 0 {
            pgrx::ereport!(
                ERROR,
                pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "set-valued function called in context that cannot accept a set"
            );
        }
        let mut tupdesc: pg_sys::TupleDesc = std::ptr::null_mut();
        if pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut tupdesc) != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE {
            pgrx::error!("eventstore internal error: a set of rows without a row type");
        }
        let old = pg_sys::MemoryContextSwitchTo((*(*rsinfo).econtext).ecxt_per_query_memory);
        let tupdesc = pg_sys::CreateTupleDescCopy(tupdesc);
        let random = (*rsinfo).allowedModes & pg_sys::SetFunctionReturnMode::SFRM_Materialize_Random as i32 != 0;
        let store = pg_sys::tuplestore_begin_heap(random, false, pg_sys::work_mem);
        for row in rows {
            let header = row.cast_mut_ptr::<pg_sys::HeapTupleHeaderData>();
            let mut tuple = pg_sys::HeapTupleData {
                t_len: pgrx::varlena::varsize_any(header.cast()) as u32,
                t_self: pg_sys::ItemPointerData::default(),
                t_tableOid: pg_sys::InvalidOid,
                t_data: header,
            };
            pg_sys::tuplestore_puttuple(store, &mut tuple);
        }
        pg_sys::MemoryContextSwitchTo(old);
        (*rsinfo).returnMode = pg_sys::SetFunctionReturnMode::SFRM_Materialize;
        (*rsinfo).setResult = store;
        (*rsinfo).setDesc = tupdesc;
    }
}
