//! The event log: state changes, in order, from every control-plane process.

use crate::db::Arg;
use crate::{Result, Store};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EventRecord {
    pub seq: i64,
    pub origin: String,
    pub kind: String,
    pub resource_id: String,
    pub project_id: Option<String>,
    pub state: String,
    pub at: String,
}

/// An event to record.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub origin: String,
    pub kind: String,
    pub resource_id: String,
    pub project_id: Option<String>,
    pub state: String,
    pub at: String,
}

/// The most events one statement inserts. Each count of rows is a
/// statement of its own in the connections' caches of prepared statements:
/// a few of them, not hundreds.
const EVENTS_PER_INSERT: usize = 16;

const EVENT_COLUMNS: &str = "seq, origin, kind, resource_id, project_id, state, at";

impl Store {
    /// Appends events, in order, in one transaction (one at a time across
    /// replicas, on PostgreSQL): a statement for each [`EVENTS_PER_INSERT`]
    /// of them. (Each statement was a transaction of
    /// its own, waited for in turn: a batch of 500 events cost 32 commits
    /// one after the other, and under a fleet's creations the log fell
    /// behind by tens of thousands of events, written long after, at rest.)
    pub async fn insert_events(&self, events: &[NewEvent]) -> Result<()> {
        let mut statements = Vec::with_capacity(events.len().div_ceil(EVENTS_PER_INSERT));
        for chunk in events.chunks(EVENTS_PER_INSERT) {
            let mut args: Vec<Arg> = Vec::with_capacity(chunk.len() * 6);
            let mut rows = Vec::with_capacity(chunk.len());
            for e in chunk {
                let n = args.len();
                rows.push(format!(
                    "(${}, ${}, ${}, ${}, ${}, ${})",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5,
                    n + 6
                ));
                args.extend([
                    (&e.origin).into(),
                    (&e.kind).into(),
                    (&e.resource_id).into(),
                    e.project_id.as_ref().into(),
                    (&e.state).into(),
                    (&e.at).into(),
                ]);
            }
            // Rows get their `seq` in the order of VALUES.
            let sql = format!(
                "INSERT INTO events (origin, kind, resource_id, project_id, state, at) VALUES {}",
                rows.join(", ")
            );
            statements.push((sql, args));
        }
        if statements.is_empty() {
            return Ok(());
        }
        // On PostgreSQL `seq` is taken at insert and seen at commit: two
        // replicas' batches could commit out of order, and a feed that has
        // shown the higher numbers never shows the lower ones. The log's
        // writers take turns (one per replica), so it commits in `seq`
        // order.
        let lock = (
            "SELECT 'locked' FROM (SELECT pg_advisory_xact_lock(hashtext($1))) AS l",
            "tessera event log".to_string(),
        );
        self.run_statements_locked("insert_events", lock, statements, |_| true)
            .await?;
        Ok(())
    }

    /// The newest event's `seq` (0 when there is none).
    pub async fn max_event_seq(&self) -> Result<i64> {
        let row: Option<(i64,)> = self
            .fetch_optional(
                "SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) FROM events",
                &[],
            )
            .await?;
        Ok(row.map_or(0, |(n,)| n))
    }

    /// Events after `seq`, in order, at most `limit`.
    pub async fn events_after_seq(&self, seq: i64, limit: i64) -> Result<Vec<EventRecord>> {
        self.fetch_all(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"),
            &[seq.into(), limit.into()],
        )
        .await
    }

    /// A project's events after `seq` (host events too, with `hosts`), in
    /// order, at most `limit`.
    pub async fn project_events_after(
        &self,
        project_id: &str,
        hosts: bool,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<EventRecord>> {
        let hosts = if hosts { 1 } else { 0 };
        self.fetch_all(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 \
                 AND (project_id = $2 OR (project_id IS NULL AND $3 = 1)) ORDER BY seq LIMIT $4"
            ),
            &[seq.into(), project_id.into(), Arg::Int(hosts), limit.into()],
        )
        .await
    }

    /// Forgets events recorded before `at`.
    pub async fn prune_events(&self, at: &str) -> Result<u64> {
        let counts = self
            .run_statements(
                "prune_events",
                vec![("DELETE FROM events WHERE at < $1".into(), vec![at.into()])],
                |_| true,
            )
            .await?;
        Ok(counts[0])
    }
}
