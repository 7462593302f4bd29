//! The one error type of the extension and its one mapping to SQLSTATE.

use pgrx::PgSqlErrorCode;
use pgrx::pg_sys::panic::ErrorReport;

/// What went wrong, which decides the SQLSTATE a caller sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 23P01: the stream is not at the version the caller expected. Not 40001: PostgREST and
    /// drivers with automatic retry re-run a transaction that failed with a serialization
    /// failure unchanged, and a wrong expected version fails the same way every time.
    WrongExpectedVersion,
    /// 23505: an event id that is already stored elsewhere, or a partly overlapping re-send.
    Duplicate,
    /// 22023: an argument that is malformed, out of range or of the wrong shape.
    InvalidArgument,
    /// 23514: a payload that fails its registered JSON Schema.
    SchemaViolation,
    /// 42501: no tenant where one is required, or a missing privilege.
    NotPermitted,
    /// 55000: a hard-deleted stream, or a worker that is not configured.
    WrongState,
    /// P0002: an unknown subscription, projection, endpoint or version.
    NotFound,
    /// 42883: a handler function that was dropped after it was registered.
    HandlerMissing,
    /// P0001: an error of the Message DB functions, raised with Message DB's own text (its
    /// clients parse it), such as its wrong expected version.
    MessageStore,
    /// XX000: a bug of ours, never a user's mistake.
    Internal,
}

impl Kind {
    fn sqlstate(self) -> PgSqlErrorCode {
        match self {
            Kind::WrongExpectedVersion => PgSqlErrorCode::ERRCODE_EXCLUSION_VIOLATION,
            Kind::Duplicate => PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            Kind::InvalidArgument => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            Kind::SchemaViolation => PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            Kind::NotPermitted => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            Kind::WrongState => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Kind::NotFound => PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            Kind::HandlerMissing => PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION,
            Kind::MessageStore => PgSqlErrorCode::ERRCODE_RAISE_EXCEPTION,
            Kind::Internal => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        }
    }
}

/// An error with a lower-case message that says what is wrong and which object; DETAIL carries
/// the values and HINT what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), detail: None, hint: None }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Kind::InvalidArgument, message)
    }
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl From<pgrx::spi::SpiError> for Error {
    fn from(e: pgrx::spi::SpiError) -> Self {
        Error::new(Kind::Internal, format!("eventstore internal SPI error: {e}"))
    }
}

impl From<Error> for ErrorReport {
    fn from(e: Error) -> Self {
        let mut report = ErrorReport::new(e.kind.sqlstate(), e.message, "eventstore");
        if let Some(detail) = e.detail {
            report = report.set_detail(detail);
        }
        if let Some(hint) = e.hint {
            report = report.set_hint(hint);
        }
        report
    }
}

