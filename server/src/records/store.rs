//! Call records in the SQLite store: one row per call, the whole record as JSON beside the
//! columns the admin API filters and orders by. Newest first, paged by a cursor of the last
//! row's (arrival, row id), so a page never shifts as new calls are written.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rusqlite::{Connection, params};

use super::record::CallRecord;

/// How long a statement waits for the other connection's write (the admin API's agents).
const BUSY_WAIT: Duration = Duration::from_secs(5);

/// The most records one page or one export holds.
pub const MAX_EXPORT: u32 = 100_000;

/// Opens the database at `path` (it exists: the admin store created it, mode 0600) with the
/// calls table.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let db = Connection::open(path)?;
    init(&db)?;
    Ok(db)
}

pub fn init(db: &Connection) -> rusqlite::Result<()> {
    db.busy_timeout(BUSY_WAIT)?;
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS calls (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             id TEXT NOT NULL UNIQUE,
             arrived_ms INTEGER NOT NULL,
             ended_ms INTEGER NOT NULL,
             queue TEXT NOT NULL,
             outcome TEXT NOT NULL,
             agents TEXT NOT NULL,
             record TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS calls_by_arrival ON calls (arrived_ms, seq);
         CREATE INDEX IF NOT EXISTS calls_by_end ON calls (ended_ms);",
    )
}

/// Writes records in one transaction: all or none.
pub fn insert(db: &mut Connection, records: &[CallRecord]) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO calls (id, arrived_ms, ended_ms, queue, outcome, agents, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for r in records {
            let json = serde_json::to_string(r)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            stmt.execute(params![
                r.id,
                to_i64(r.arrived),
                to_i64(r.ended),
                r.queue,
                r.outcome,
                agents_column(r),
                json
            ])?;
        }
    }
    tx.commit()
}

/// The agents a call was offered to, as `,a,b,` so one can be matched whole.
fn agents_column(r: &CallRecord) -> String {
    let mut s = String::from(",");
    for o in &r.offers {
        s.push_str(&o.agent);
        s.push(',');
    }
    s
}

/// Sets the wrap-up of a written record. Returns whether there was one.
pub fn set_wrap_up(db: &Connection, id: &str, wrap_up_ms: u64) -> rusqlite::Result<bool> {
    let n = db.execute(
        "UPDATE calls SET record = json_set(record, '$.wrap_up_ms', ?2) WHERE id = ?1",
        params![id, to_i64(wrap_up_ms)],
    )?;
    Ok(n > 0)
}

/// Deletes records of calls that ended before `before_ms`; returns how many.
pub fn delete_ended_before(db: &Connection, before_ms: u64) -> rusqlite::Result<usize> {
    db.execute(
        "DELETE FROM calls WHERE ended_ms < ?1",
        params![to_i64(before_ms)],
    )
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Where a page starts: after this row, in newest-first order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    arrived_ms: i64,
    seq: i64,
}

impl Cursor {
    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}.{}", self.arrived_ms, self.seq))
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let raw = URL_SAFE_NO_PAD.decode(text).ok()?;
        let raw = std::str::from_utf8(&raw).ok()?;
        let (a, s) = raw.split_once('.')?;
        Some(Cursor {
            arrived_ms: a.parse().ok()?,
            seq: s.parse().ok()?,
        })
    }
}

/// Which records, checked before they reach SQL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Arrived at or after (Unix ms).
    pub from: Option<u64>,
    /// Arrived before.
    pub to: Option<u64>,
    pub queue: Option<String>,
    /// Offered to this agent (the one who answered included).
    pub agent: Option<String>,
    pub outcome: Option<String>,
    pub cursor: Option<Cursor>,
    pub limit: u32,
}

/// One queue's calls over a time range, by outcome, for the service level.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueSummary {
    pub queue: String,
    pub answered: u64,
    /// Answered after waiting no longer than the service-level target.
    pub answered_in_target: u64,
    pub abandoned: u64,
    pub timed_out: u64,
    pub refused: u64,
}

/// Per queue, the records of calls that arrived in `[from, to)`; `target_ms` is the
/// service level's wait.
pub fn summary(
    db: &Connection,
    from: u64,
    to: u64,
    target_ms: u64,
) -> rusqlite::Result<Vec<QueueSummary>> {
    let mut stmt = db.prepare_cached(
        "SELECT queue, outcome, COUNT(*),
                SUM(CASE WHEN json_extract(record, '$.wait_ms') <= ?3 THEN 1 ELSE 0 END)
         FROM calls WHERE arrived_ms >= ?1 AND arrived_ms < ?2
         GROUP BY queue, outcome ORDER BY queue",
    )?;
    let rows = stmt.query_map(params![to_i64(from), to_i64(to), to_i64(target_ms)], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out: Vec<QueueSummary> = Vec::new();
    for row in rows {
        let (queue, outcome, n, in_target) = row?;
        let n = u64::try_from(n).unwrap_or(0);
        if out.last().is_none_or(|q| q.queue != queue) {
            out.push(QueueSummary {
                queue,
                ..QueueSummary::default()
            });
        }
        let Some(q) = out.last_mut() else { continue };
        match outcome.as_str() {
            "answered" => {
                q.answered = n;
                q.answered_in_target = u64::try_from(in_target).unwrap_or(0);
            }
            "abandoned" => q.abandoned = n,
            "timed-out" => q.timed_out = n,
            _ => q.refused += n,
        }
    }
    Ok(out)
}

/// A page of records, newest first, and the cursor of the next when there is one.
pub fn query(db: &Connection, f: &Filter) -> rusqlite::Result<(Vec<CallRecord>, Option<Cursor>)> {
    let mut sql = String::from("SELECT seq, arrived_ms, record FROM calls WHERE 1 = 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    use rusqlite::types::Value::{Integer, Text};
    if let Some(from) = f.from {
        arg(&mut sql, " AND arrived_ms >= ?", Integer(to_i64(from)));
    }
    if let Some(to) = f.to {
        arg(&mut sql, " AND arrived_ms < ?", Integer(to_i64(to)));
    }
    if let Some(queue) = &f.queue {
        arg(&mut sql, " AND queue = ?", Text(queue.clone()));
    }
    if let Some(outcome) = &f.outcome {
        arg(&mut sql, " AND outcome = ?", Text(outcome.clone()));
    }
    if let Some(agent) = &f.agent {
        arg(
            &mut sql,
            " AND instr(agents, ?) > 0",
            Text(format!(",{agent},")),
        );
    }
    if let Some(c) = f.cursor {
        arg(&mut sql, " AND (arrived_ms < ?", Integer(c.arrived_ms));
        arg(&mut sql, " OR (arrived_ms = ?", Integer(c.arrived_ms));
        arg(&mut sql, " AND seq < ?))", Integer(c.seq));
    }
    // One more than asked: whether there is a next page.
    let limit = f.limit.min(MAX_EXPORT);
    arg(
        &mut sql,
        " ORDER BY arrived_ms DESC, seq DESC LIMIT ?",
        Integer(i64::from(limit) + 1),
    );
    let mut stmt = db.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut records = Vec::new();
    let mut last = None;
    let mut more = false;
    for row in rows {
        let (seq, arrived_ms, json) = row?;
        if records.len() == limit as usize {
            more = true;
            break;
        }
        let record: CallRecord = serde_json::from_str(&json).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
        })?;
        records.push(record);
        last = Some(Cursor { arrived_ms, seq });
    }
    Ok((records, last.filter(|_| more)))
}
