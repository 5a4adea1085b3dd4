//! PostgreSQL's connections: sqlx's pool, with the connections just used
//! kept at hand.
//!
//! sqlx 0.8's pool pings (a round trip, and a task of its own) every
//! connection given back to it, whatever happened to it, and by default
//! every one it hands out. A creation's two dozen reads and writes each
//! took a connection and gave it back: two of every three round trips to
//! PostgreSQL were pings. Here a connection whose work ended cleanly is
//! kept, still checked out of sqlx's pool, and handed as it is to the next
//! caller. One that failed, was dropped mid-way (a cancelled request: it
//! may have a transaction to roll back or rows unread), or sat unused for
//! [`HOT_FOR`] goes back to sqlx, which pings it (and closes it if that
//! fails) as before; sqlx pings one idle in its pool for [`HOT_FOR`] or
//! more before handing it out.

use sqlx::AnyConnection;
use sqlx::any::AnyPoolOptions;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The most connections to PostgreSQL, in use or kept.
const MAX_CONNECTIONS: u32 = 16;

/// How long a caller waits for a connection before the store answers
/// [`sqlx::Error::PoolTimedOut`] (a transient error: writes retry it).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection given back stays at hand without a ping: one
/// used that recently was just answering.
pub(crate) const HOT_FOR: Duration = Duration::from_secs(5);

/// sqlx's pool and the connections kept out of it.
#[derive(Clone)]
pub(crate) struct PgPool(Arc<Inner>);

struct Inner {
    pool: AnyPool,
    /// One per connection, in use or kept: sqlx's pool never has all its
    /// connections kept here while a caller waits on it.
    permits: Arc<Semaphore>,
    hot: Mutex<Hot>,
}

/// The connections kept, the oldest first; none once the pool is closing
/// (sqlx's `close` waits for every connection checked out).
#[derive(Default)]
struct Hot {
    kept: Vec<(PoolConnection<Any>, Instant)>,
    closed: bool,
}

/// A connection taken from a [`PgPool`]: give it back with
/// [`PgConn::release`]; dropped, it goes back to sqlx's pool.
pub(crate) struct PgConn {
    conn: Option<PoolConnection<Any>>,
    pool: PgPool,
    _permit: OwnedSemaphorePermit,
}

impl PgPool {
    /// Connects to PostgreSQL with `options`.
    pub(crate) async fn connect(options: sqlx::any::AnyConnectOptions) -> sqlx::Result<PgPool> {
        let pool = AnyPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= HOT_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        let inner = Arc::new(Inner {
            pool,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS as usize)),
            hot: Mutex::new(Hot::default()),
        });
        // Connections kept and left unused go back to sqlx, whose idle
        // timeout closes them when the store stays quiet.
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HOT_FOR).await;
                let Some(inner) = weak.upgrade() else { break };
                PgPool(inner).cool_stale();
            }
        });
        Ok(PgPool(inner))
    }

    /// Gives back to sqlx's pool the kept connections unused for
    /// [`HOT_FOR`].
    fn cool_stale(&self) {
        let mut hot = self.0.hot.lock().unwrap_or_else(PoisonError::into_inner);
        let stale = hot
            .kept
            .iter()
            .take_while(|(_, at)| at.elapsed() >= HOT_FOR)
            .count();
        let stale: Vec<_> = hot.kept.drain(..stale).collect();
        drop(hot);
        drop(stale);
    }

    /// sqlx's pool, for what runs outside the hot path (migrations).
    pub(crate) fn sqlx(&self) -> &AnyPool {
        &self.0.pool
    }

    /// A connection: the one given back last, if recent enough, or one of
    /// sqlx's pool.
    pub(crate) async fn get(&self) -> sqlx::Result<PgConn> {
        let permit = tokio::time::timeout(ACQUIRE_TIMEOUT, self.0.permits.clone().acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let conn = match self.take_hot() {
            Some(conn) => conn,
            // The permit says one is free in sqlx's pool, or about to be
            // once the ping of one given back answers.
            None => self.0.pool.acquire().await?,
        };
        Ok(PgConn {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        })
    }

    /// The most recently given back connection, if it is recent enough
    /// (older ones go back to sqlx's pool).
    fn take_hot(&self) -> Option<PoolConnection<Any>> {
        self.cool_stale();
        let mut hot = self.0.hot.lock().unwrap_or_else(PoisonError::into_inner);
        hot.kept.pop().map(|(conn, _)| conn)
    }

    /// Gives every kept connection back to sqlx's pool, which pings them;
    /// `closing`, none is kept from now on.
    fn cool(&self, closing: bool) {
        let mut hot = self.0.hot.lock().unwrap_or_else(PoisonError::into_inner);
        hot.closed |= closing;
        let stale: Vec<_> = hot.kept.drain(..).collect();
        drop(hot);
        drop(stale);
    }

    /// Closes every connection.
    pub(crate) async fn close(&self) {
        self.cool(true);
        self.0.permits.close();
        self.0.pool.close().await;
    }
}

impl PgConn {
    /// Gives the connection back after its work: kept at hand if that
    /// work succeeded, else to sqlx's pool. Answers whether it failed as a
    /// lost connection does ([`is_lost_connection`]): then the ones kept
    /// go back to sqlx too, which pings them (a restarted server closed
    /// them all).
    pub(crate) fn release<T>(mut self, result: &Result<T, impl AsSqlx>) -> bool {
        let Some(conn) = self.conn.take() else {
            return false;
        };
        match result {
            Ok(_) => {
                let mut hot = self
                    .pool
                    .0
                    .hot
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if !hot.closed {
                    hot.kept.push((conn, Instant::now()));
                }
                false
            }
            Err(err) => {
                drop(conn);
                let lost = err.as_sqlx().is_some_and(is_lost_connection);
                if lost {
                    self.pool.cool(false);
                }
                lost
            }
        }
    }
}

/// How many times a read is tried on connections that turn out lost.
pub(crate) const READ_TRIES: u32 = 3;

/// Whether `err` says the connection is gone: the socket failed, or the
/// server ended the session (see [`ended_by_server`]), or another
/// connection exception (class `08`). A read so failed may be tried
/// again on another connection.
pub(crate) fn is_lost_connection(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => {
            ended_by_server(err) || db.code().is_some_and(|code| code.starts_with("08"))
        }
        _ => false,
    }
}

/// Whether the server answered that it had ended the session (`57P01`
/// admin shutdown, `57P02` crash shutdown, `57P03` cannot connect now): a
/// restarted server leaves that answer on every connection it had. The
/// work sent did not commit (a commit done is answered before the session
/// ends), so a write may be tried again. A socket that failed says
/// nothing of the sort: a commit may have been done and its answer lost.
pub(crate) fn ended_by_server(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| matches!(&*code, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

impl std::ops::Deref for PgConn {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

/// An error that may be sqlx's.
pub(crate) trait AsSqlx {
    fn as_sqlx(&self) -> Option<&sqlx::Error>;
}

impl AsSqlx for sqlx::Error {
    fn as_sqlx(&self) -> Option<&sqlx::Error> {
        Some(self)
    }
}

impl AsSqlx for crate::db::DbError {
    fn as_sqlx(&self) -> Option<&sqlx::Error> {
        match self {
            crate::db::DbError::Sqlx(err) => Some(err),
            _ => None,
        }
    }
}
