//! The one error type of the app layer. Each face turns it into its own
//! documented error body in one place; the message is for the user, the
//! source (when there is one) is for the log.

use tessera_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input. `field` names the offending request field when there is one.
    #[error("{message}")]
    Invalid {
        field: Option<&'static str>,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The project's balance does not cover it.
    #[error("{0}")]
    InsufficientFunds(String),
    /// Too many requests in the current window; retry after the seconds given.
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    /// Nothing free matches the request.
    #[error("{0}")]
    NoCapacity(String),
    /// The request would take its project over a quota.
    #[error("{0}")]
    QuotaExceeded(tessera_core::quota::QuotaExceeded),
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but without the permission.
    #[error("{0}")]
    Forbidden(String),
    /// A host refused or failed the work asked of it.
    #[error("{0}")]
    HostFailed(String),
    /// A host did not finish in time; the work goes on in the background.
    #[error("{0}")]
    HostTimeout(String),
    /// The work cannot be done now (no agent on the host, database down).
    #[error("{0}")]
    Unavailable(String),
    /// The request's body is larger than the server reads.
    #[error("{0}")]
    TooLarge(String),
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl Error {
    /// What the store holds cannot be read (a row no code writes): an
    /// internal error, with what is wrong for the log.
    pub fn corrupt(what: impl Into<String>) -> Self {
        Error::Internal(StoreError::Corrupt(what.into()))
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: Some(field),
            message: message.into(),
        }
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Query(sqlx_err) if is_unavailable(&sqlx_err) => {
                Error::Unavailable("the database is unavailable; try again".into())
            }
            StoreError::QuotaExceeded(exceeded) => Error::QuotaExceeded(exceeded),
            // The pre-check (`App::check_funds`) words it better; this is a
            // write that lost a race to another one.
            StoreError::InsufficientFunds(short) => Error::InsufficientFunds(format!(
                "the project's balance of {:.4} does not cover an hour of what it runs and is \
                 creating ({:.4} per hour), this included",
                tessera_core::catalog::from_micros(short.balance_micros),
                tessera_core::catalog::from_micros(short.hourly_micros),
            )),
            other => Error::Internal(other),
        }
    }
}

fn is_unavailable(err: &tessera_store::SqlxError) -> bool {
    matches!(
        err,
        tessera_store::SqlxError::PoolTimedOut
            | tessera_store::SqlxError::PoolClosed
            | tessera_store::SqlxError::Io(_)
    )
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
