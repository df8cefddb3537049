//! Writes call records on a thread of its own, so a slow or failing disk never holds up the
//! distributor's task: the core hands records over and goes on. Records the store refuses
//! (disk full, read-only file, a lock held too long) are kept, up to `max_pending`, and
//! retried every [`RETRY`]; the first failure of a stretch is logged with its error, and the
//! recovery too. Old records are deleted past the retention, at start and hourly.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use tracing::{error, info, warn};

use super::record::CallRecord;
use super::recorder::RecordOutput;
use super::store;
use crate::metrics::Metrics;

/// How often records the store refused are tried again.
pub const RETRY: Duration = Duration::from_secs(2);
/// How often records past the retention are deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// Records handed over and not yet taken by the thread: beyond it the distributor does not
/// wait, the record is counted as dropped.
const QUEUE: usize = 65_536;
/// Records written in one transaction at most.
const BATCH: usize = 1000;

enum Msg {
    Out(RecordOutput),
    /// Reply once everything handed over before has been tried.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The distributor's end of the writer thread.
#[derive(Debug, Clone)]
pub struct RecordWriter {
    tx: SyncSender<Msg>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub db: PathBuf,
    pub retention_days: u64,
    pub max_pending: usize,
}

impl RecordWriter {
    /// Opens the store's calls table (an error here stops the start: the store is the same
    /// file the admin API just opened) and starts the thread.
    pub fn start(
        settings: WriterSettings,
        metrics: Arc<Metrics>,
    ) -> rusqlite::Result<RecordWriter> {
        let db = store::open(&settings.db)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let thread_metrics = metrics.clone();
        let spawned = std::thread::Builder::new()
            .name("call-records".into())
            .spawn(move || Thread::new(db, settings, thread_metrics).run(rx));
        if let Err(e) = spawned {
            return Err(rusqlite::Error::ToSqlConversionFailure(Box::new(e)));
        }
        Ok(RecordWriter { tx, metrics })
    }

    /// Hands a record (or an update) over; never blocks.
    pub fn send(&self, out: RecordOutput) {
        match self.tx.try_send(Msg::Out(out)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                warn!("call record dropped: the writer is {QUEUE} records behind");
                self.metrics.records(0, false, QUEUE, 1);
            }
            Err(TrySendError::Disconnected(_)) => {
                error!("call record dropped: the writer thread is gone");
                self.metrics.records(0, false, 0, 1);
            }
        }
    }

    /// `reply` is told once what was handed over before has been written (or, failing that,
    /// logged as lost at exit).
    pub fn flush(&self, reply: tokio::sync::oneshot::Sender<()>) {
        if let Err(
            TrySendError::Full(Msg::Flush(reply)) | TrySendError::Disconnected(Msg::Flush(reply)),
        ) = self.tx.try_send(Msg::Flush(reply))
        {
            let _ = reply.send(());
        }
    }
}

struct Thread {
    db: Connection,
    settings: WriterSettings,
    metrics: Arc<Metrics>,
    pending: VecDeque<CallRecord>,
    /// Wrap-ups of records not found (not written yet when they came): tried with the next
    /// write.
    updates: Vec<(String, u64)>,
    failing: bool,
    retry_at: Option<Instant>,
    retention_at: Instant,
}

impl Thread {
    fn new(db: Connection, settings: WriterSettings, metrics: Arc<Metrics>) -> Thread {
        Thread {
            db,
            settings,
            metrics,
            pending: VecDeque::new(),
            updates: Vec::new(),
            failing: false,
            retry_at: None,
            retention_at: Instant::now(),
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let now = Instant::now();
            if now >= self.retention_at {
                self.enforce_retention();
                self.retention_at = now + RETENTION_EVERY;
            }
            let wake = self
                .retry_at
                .map_or(self.retention_at, |r| r.min(self.retention_at));
            match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(msg) => {
                    let mut flushes = Vec::new();
                    self.take(msg, &mut flushes);
                    while self.pending.len() < BATCH {
                        let Ok(msg) = rx.try_recv() else { break };
                        self.take(msg, &mut flushes);
                    }
                    let due = self.retry_at.is_none_or(|r| r <= Instant::now());
                    if due || !flushes.is_empty() {
                        self.write();
                    }
                    for reply in flushes {
                        let _ = reply.send(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.retry_at.is_some_and(|r| r <= Instant::now()) {
                        self.write();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.write();
                    if !self.pending.is_empty() {
                        error!(
                            lost = self.pending.len(),
                            "call records lost at exit: the store could not be written"
                        );
                    }
                    return;
                }
            }
        }
    }

    fn take(&mut self, msg: Msg, flushes: &mut Vec<tokio::sync::oneshot::Sender<()>>) {
        match msg {
            Msg::Out(RecordOutput::Write(record)) => {
                self.pending.push_back(*record);
                if self.pending.len() > self.settings.max_pending {
                    self.pending.pop_front();
                    warn!(
                        max_pending = self.settings.max_pending,
                        "oldest call record dropped: too many waiting for the store"
                    );
                    self.metrics.records(0, false, self.pending.len(), 1);
                }
            }
            Msg::Out(RecordOutput::WrapUp { id, wrap_up_ms }) => {
                match self.pending.iter_mut().find(|r| r.id == id) {
                    Some(r) => r.wrap_up_ms = Some(wrap_up_ms),
                    None => self.updates.push((id, wrap_up_ms)),
                }
            }
            Msg::Flush(reply) => flushes.push(reply),
        }
    }

    /// Tries the pending records and updates; on failure keeps them for [`RETRY`].
    fn write(&mut self) {
        if self.pending.is_empty() && self.updates.is_empty() {
            self.retry_at = None;
            return;
        }
        let records = self.pending.make_contiguous();
        let written = records.len();
        let result = store::insert(&mut self.db, records).and_then(|()| {
            for (id, wrap_up_ms) in &self.updates {
                store::set_wrap_up(&self.db, id, *wrap_up_ms)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                self.pending.clear();
                self.updates.clear();
                self.retry_at = None;
                self.metrics.records(written as u64, false, 0, 0);
                if std::mem::take(&mut self.failing) {
                    info!(written, "call records written again");
                }
            }
            Err(e) => {
                if !self.failing {
                    warn!(error = %e, pending = self.pending.len(), "call records not written: kept and retried every 2 s");
                }
                self.failing = true;
                self.retry_at = Some(Instant::now() + RETRY);
                self.metrics.records(0, true, self.pending.len(), 0);
            }
        }
    }

    fn enforce_retention(&mut self) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let keep_ms = self.settings.retention_days.saturating_mul(86_400_000);
        match store::delete_ended_before(&self.db, now_ms.saturating_sub(keep_ms)) {
            Ok(0) => {}
            Ok(n) => info!(
                deleted = n,
                days = self.settings.retention_days,
                "call records past the retention deleted"
            ),
            Err(e) => warn!(error = %e, "call records past the retention not deleted"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, ended: u64) -> CallRecord {
        let json = format!(
            r#"{{"id":"{id}","call_id":"c-{id}","caller":"sip:1@x","caller_name":null,
            "dialled":"sip:s@x","call_type":"t","queue":"q","priority":0,
            "arrived":"{a}","answered":null,"ended":"{a}","outcome":"abandoned",
            "reason":"caller hung up","hung_up_by":null,"agent":null,"edge":null,
            "offers":[],"wait_ms":1,"ring_ms":null,"talk_ms":null,"wrap_up_ms":null,
            "media":null,"disposition":null,"notes":null}}"#,
            a = super::super::record::rfc3339::format(ended)
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn old_records_go_and_recent_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut db = store::open(&path).unwrap();
        let old = record("old", now_ms - 3 * 86_400_000);
        let new = record("new", now_ms - 1000);
        store::insert(&mut db, &[old, new]).unwrap();
        let settings = WriterSettings {
            db: path.clone(),
            retention_days: 2,
            max_pending: 10,
        };
        let metrics = Arc::new(Metrics::new(Duration::from_secs(20)));
        let mut thread = Thread::new(store::open(&path).unwrap(), settings, metrics);
        thread.enforce_retention();
        let filter = store::Filter {
            limit: 10,
            ..Default::default()
        };
        let (left, next) = store::query(&db, &filter).unwrap();
        assert_eq!(
            left.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["new"]
        );
        assert_eq!(next, None);
    }

    #[test]
    fn pages_follow_each_other_without_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = store::open(&dir.path().join("db")).unwrap();
        let records: Vec<CallRecord> = (0..5).map(|i| record(&format!("r{i}"), 1000 + i)).collect();
        store::insert(&mut db, &records).unwrap();
        let mut filter = store::Filter {
            limit: 2,
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let (page, next) = store::query(&db, &filter).unwrap();
            seen.extend(page.into_iter().map(|r| r.id));
            match next {
                Some(c) => filter.cursor = store::Cursor::decode(&c.encode()),
                None => break,
            }
        }
        assert_eq!(seen, ["r4", "r3", "r2", "r1", "r0"]);
        assert!(store::set_wrap_up(&db, "r2", 1234).unwrap());
        assert!(!store::set_wrap_up(&db, "nope", 1).unwrap());
        filter.cursor = None;
        filter.limit = 10;
        let (all, _) = store::query(&db, &filter).unwrap();
        assert_eq!(
            all.iter().find(|r| r.id == "r2").unwrap().wrap_up_ms,
            Some(1234)
        );
        filter.outcome = Some("answered".into());
        assert!(store::query(&db, &filter).unwrap().0.is_empty());
    }
}
