//! The SQLite store: sessions in one database file, in WAL mode, that
//! survive restarts and crashes of the process.
//!
//! # Schema (`PRAGMA user_version = 1`)
//!
//! ```sql
//! CREATE TABLE sessions (
//!     key_hash        BLOB PRIMARY KEY,  -- SHA-256 of the session key (32 bytes)
//!     data            TEXT NOT NULL,     -- JSON object
//!     expires_at      INTEGER NOT NULL,  -- effective deadline: Record::deadline(idle)
//!     created_at      INTEGER NOT NULL,  -- Record::created_at
//!     subject         TEXT NULL,         -- Record::subject
//!     hard_expires_at INTEGER NOT NULL,  -- Record::expires_at (no idle timeout applied)
//!     expiry_kind     INTEGER NOT NULL,  -- 0 default, 1 browser close, 2 idle
//!     expiry_secs     INTEGER NOT NULL,  -- seconds of an idle expiry, else 0
//!     seen_at         INTEGER NOT NULL,  -- Record::seen_at
//!     version         INTEGER NOT NULL   -- bumped on every write, for compare-and-swap
//! ) STRICT;
//! CREATE INDEX sessions_expires_at ON sessions (expires_at);
//! CREATE INDEX sessions_subject ON sessions (subject) WHERE subject IS NOT NULL;
//! CREATE TABLE settings (name TEXT PRIMARY KEY, value INTEGER) STRICT;
//! ```
//!
//! `expires_at` is the deadline under the store's idle timeout, so purge and
//! count are one indexed range each (`expires_at <= now` is dead). The idle
//! timeout it was computed with is kept in `settings` (`idle_timeout`, NULL for
//! none); opening with a different one recomputes the column, so a changed
//! configuration neither purges live sessions nor counts dead ones. Times are
//! unix seconds. A newer `user_version` is refused; an older one is migrated.
//!
//! # Threads
//!
//! No SQLite call runs on an async worker: one writer thread owns the only
//! read-write connection and takes jobs from a channel, a few reader threads
//! share a queue and each own a read-only connection, and replies go back on
//! tokio oneshots. The writer commits whatever is queued in one transaction
//! (group commit), each job inside its own savepoint so a failing job rolls
//! back alone; every reply is sent after COMMIT. The writer also runs the
//! periodic purge. Dropping the store closes the channels and the threads end.
//!
//! # Atomic updates
//!
//! An edit borrows the caller's data, so it runs on the caller's side: read
//! the row and its `version`, run the edit, then ask the writer to apply the
//! result only if the row is still at that version. A conflict answers with
//! the row as it now is and the edit runs again, a bounded number of times.

use std::fmt;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::keyed::{Backend, Change};
use super::{Edit, Expiry, KeyHash, Next, Record, StoreError, UpdateError};
use crate::clock::Clock;
use crate::config::SqliteConfig;

/// The schema this build writes; files with a larger `user_version` are refused.
const SCHEMA_VERSION: i64 = 1;
/// Read-only connections, each on its own thread.
const READERS: usize = 2;
/// Most jobs committed in one transaction: bounds the latency one batch adds.
const MAX_BATCH: usize = 256;
/// Compare-and-swap attempts of one update before giving up. Each conflict
/// means another write of the same session committed first, so this many
/// concurrent writers of one session are served.
const MAX_ATTEMPTS: usize = 64;
/// Rows one periodic purge transaction deletes, so queued writes are not held
/// up behind a large sweep.
const PURGE_CHUNK: i64 = 2_000;
/// SQLite takes the busy timeout in milliseconds as an `i32` (rusqlite
/// panics beyond it); longer configured waits are cut to this, about 24 days.
const MAX_BUSY_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);
/// Page cache of the writer connection, in KiB.
const WRITER_CACHE_KIB: i64 = 16 * 1024;

const SCHEMA_V1: &str = "
CREATE TABLE sessions (
    key_hash        BLOB PRIMARY KEY,
    data            TEXT NOT NULL,
    expires_at      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    subject         TEXT NULL,
    hard_expires_at INTEGER NOT NULL,
    expiry_kind     INTEGER NOT NULL,
    expiry_secs     INTEGER NOT NULL,
    seen_at         INTEGER NOT NULL,
    version         INTEGER NOT NULL
) STRICT;
CREATE INDEX sessions_expires_at ON sessions (expires_at);
CREATE INDEX sessions_subject ON sessions (subject) WHERE subject IS NOT NULL;
CREATE TABLE settings (name TEXT PRIMARY KEY, value INTEGER) STRICT;
";

const SELECT: &str = "SELECT data, created_at, hard_expires_at, expiry_kind, expiry_secs, \
     seen_at, subject, version FROM sessions WHERE key_hash = ?1";
/// Live rows in key order (the primary key's), the key last.
const LIST: &str = "SELECT data, created_at, hard_expires_at, expiry_kind, expiry_secs, \
     seen_at, subject, version, key_hash FROM sessions WHERE expires_at > ?1 \
     ORDER BY key_hash LIMIT ?2";
const INSERT: &str = "INSERT INTO sessions (key_hash, data, expires_at, created_at, subject, \
     hard_expires_at, expiry_kind, expiry_secs, seen_at, version) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1)";
const UPDATE_IF: &str = "UPDATE sessions SET data = ?2, expires_at = ?3, created_at = ?4, \
     subject = ?5, hard_expires_at = ?6, expiry_kind = ?7, expiry_secs = ?8, seen_at = ?9, \
     version = version + 1 WHERE key_hash = ?1 AND version = ?10";
const DELETE_IF: &str = "DELETE FROM sessions WHERE key_hash = ?1 AND version = ?2";
const TOUCH_IF: &str = "UPDATE sessions SET seen_at = ?2, expires_at = ?3, version = version + 1 \
     WHERE key_hash = ?1 AND version = ?4";

/// Sessions in one SQLite file.
pub struct SqliteStore {
    writer: mpsc::Sender<Box<dyn WriteJob>>,
    readers: mpsc::Sender<ReadJob>,
    clock: Arc<dyn Clock>,
    idle: Option<u64>,
    path: PathBuf,
    /// Upgradable while any of the store's threads runs.
    #[cfg(test)]
    threads: std::sync::Weak<()>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) the database and starts the store's threads.
    pub fn open(
        config: &SqliteConfig,
        idle: Option<u64>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let path = config.path.clone();
        let fail = |what: &str, e: &dyn fmt::Display| StoreError {
            op: "open",
            message: format!("{}: {what}: {e}", path.display()),
        };
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| fail("cannot open the database", &e))?;
        let busy_timeout = config.busy_timeout.min(MAX_BUSY_TIMEOUT);
        conn.busy_timeout(busy_timeout)
            .map_err(|e| fail("cannot set the busy timeout", &e))?;
        // Before anything changes the file: a newer schema is not ours to touch.
        check_version(&conn).map_err(|e| fail("unusable database", &e))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| fail("cannot switch to WAL mode", &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(fail("cannot switch to WAL mode", &format!("got {mode:?}")));
        }
        let sync = if config.synchronous_full {
            "FULL"
        } else {
            "NORMAL"
        };
        conn.pragma_update(None, "synchronous", sync)
            .and_then(|()| conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB))
            .map_err(|e| fail("cannot configure the connection", &e))?;
        prepare_schema(&mut conn, idle_secs(idle)).map_err(|e| fail("cannot set up", &e))?;

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| fail("cannot open a read connection", &e))?;
            reader
                .busy_timeout(busy_timeout)
                .map_err(|e| fail("cannot set the busy timeout", &e))?;
            readers.push(reader);
        }

        let alive = Arc::new(());
        let (writer_tx, writer_rx) = mpsc::channel::<Box<dyn WriteJob>>();
        let (reader_tx, reader_rx) = mpsc::channel::<ReadJob>();
        let reader_rx = Arc::new(Mutex::new(reader_rx));
        for (i, conn) in readers.into_iter().enumerate() {
            let rx = reader_rx.clone();
            let alive = alive.clone();
            std::thread::Builder::new()
                .name(format!("sqlite-reader-{i}"))
                .spawn(move || {
                    // Declared in this order so the connection closes first.
                    let _alive = alive;
                    let conn = conn;
                    reader_loop(&conn, &rx);
                })
                .map_err(|e| fail("cannot start a reader thread", &e))?;
        }
        let writer = Writer {
            conn,
            jobs: writer_rx,
            clock: clock.clone(),
            purge_interval: config.purge_interval,
        };
        let writer_alive = alive.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let _alive = writer_alive;
                writer.run();
            })
            .map_err(|e| fail("cannot start the writer thread", &e))?;
        #[cfg(test)]
        let threads = Arc::downgrade(&alive);
        drop(alive);
        Ok(Self {
            writer: writer_tx,
            readers: reader_tx,
            clock,
            idle,
            path,
            #[cfg(test)]
            threads,
        })
    }

    /// Runs `work` on a reader thread.
    async fn read<T, F>(&self, op: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            let _ = tx.send(work(conn));
        });
        self.readers.send(job).map_err(|_| stopped(op))?;
        rx.await.map_err(|_| stopped(op))?
    }

    /// Runs `work` on the writer thread; the answer comes after COMMIT.
    async fn write<T, F>(&self, op: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Job {
            op,
            work: Some(work),
            outcome: None,
            reply,
        });
        self.writer.send(job).map_err(|_| stopped(op))?;
        rx.await.map_err(|_| stopped(op))?
    }

    /// The row under `id` with its version, from a reader.
    async fn fetch(&self, op: &'static str, id: &KeyHash) -> Result<Option<Stored>, StoreError> {
        let key = *id;
        self.read(op, move |conn| select(conn, op, &key)).await
    }
}

/// The store's threads are gone: only after a panic, as the store owns the channels.
fn stopped(op: &'static str) -> StoreError {
    StoreError {
        op,
        message: "the sqlite store's thread has stopped".into(),
    }
}

fn sql_error(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError {
        op,
        message: format!("sqlite: {e}"),
    }
}

fn idle_secs(idle: Option<u64>) -> Option<i64> {
    idle.map(|s| i64::try_from(s).unwrap_or(i64::MAX))
}

fn check_version(conn: &Connection) -> Result<i64, String> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| e.to_string())?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "its schema version is {version}, written by a newer sessionward; this one \
             knows versions up to {SCHEMA_VERSION} and refuses to open it"
        ));
    }
    if version < 0 {
        return Err(format!("its schema version {version} is not sessionward's"));
    }
    Ok(version)
}

/// Creates or migrates the schema and aligns `expires_at` with the idle timeout.
fn prepare_schema(conn: &mut Connection, idle: Option<i64>) -> Result<(), String> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    // Again under the write lock: another process may have set it up meanwhile.
    let version = check_version(&tx)?;
    if version == 0 {
        tx.execute_batch(SCHEMA_V1).map_err(|e| {
            format!("cannot create the schema (is this another program's database?): {e}")
        })?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| e.to_string())?;
    }
    // Migrations from older versions go here: `if version < 2 { ... }`.
    let stored: Option<Option<i64>> = tx
        .query_row(
            "SELECT value FROM settings WHERE name = 'idle_timeout'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(|e| format!("cannot read the settings: {e}"))?;
    if stored != Some(idle) {
        // Saturating `seen_at + idle`, as Record::deadline computes it.
        let n = tx
            .execute(
                "UPDATE sessions SET expires_at = CASE WHEN ?1 IS NULL THEN hard_expires_at \
                 ELSE min(hard_expires_at, CASE WHEN seen_at > 9223372036854775807 - ?1 \
                 THEN 9223372036854775807 ELSE seen_at + ?1 END) END",
                [idle],
            )
            .map_err(|e| format!("cannot apply the new idle timeout: {e}"))?;
        tx.execute(
            "INSERT OR REPLACE INTO settings (name, value) VALUES ('idle_timeout', ?1)",
            [idle],
        )
        .map_err(|e| format!("cannot save the settings: {e}"))?;
        if stored.is_some() {
            debug!(
                sessions = n,
                "idle timeout changed; session deadlines recomputed"
            );
        }
    }
    tx.commit().map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------

/// A row as read: the record and the version a compare-and-swap expects.
#[derive(Debug, Clone)]
struct Stored {
    record: Record,
    version: i64,
}

/// The columns a record is written as.
struct Columns<'a> {
    data: &'a str,
    deadline: i64,
    created_at: i64,
    subject: Option<&'a str>,
    hard_expires_at: i64,
    expiry_kind: i64,
    expiry_secs: i64,
    seen_at: i64,
}

impl<'a> Columns<'a> {
    fn of(record: &'a Record, idle: Option<u64>) -> Result<Self, String> {
        let (expiry_kind, expiry_secs) = match record.expiry {
            Expiry::Default => (0, 0),
            Expiry::BrowserClose => (1, 0),
            Expiry::Idle(secs) => (
                2,
                i64::try_from(secs)
                    .map_err(|_| format!("an expiry of {secs} seconds is too large to store"))?,
            ),
        };
        Ok(Self {
            data: &record.data,
            deadline: record.deadline(idle),
            created_at: record.created_at,
            subject: record.subject.as_deref(),
            hard_expires_at: record.expires_at,
            expiry_kind,
            expiry_secs,
            seen_at: record.seen_at,
        })
    }

    /// The row under `key`: the values of ?1 to ?9 of `INSERT` and `UPDATE_IF`.
    fn row<'b>(&'b self, key: &'b KeyHash) -> [&'b dyn rusqlite::ToSql; 9] {
        [
            &key.0,
            &self.data,
            &self.deadline,
            &self.created_at,
            &self.subject,
            &self.hard_expires_at,
            &self.expiry_kind,
            &self.expiry_secs,
            &self.seen_at,
        ]
    }
}

fn select(
    conn: &Connection,
    op: &'static str,
    key: &KeyHash,
) -> Result<Option<Stored>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT).map_err(sql_error(op))?;
    let mut rows = stmt.query([&key.0[..]]).map_err(sql_error(op))?;
    let Some(row) = rows.next().map_err(sql_error(op))? else {
        return Ok(None);
    };
    decode(row).map(Some).map_err(|why| StoreError {
        op,
        message: format!("the stored session {key} is corrupt: {why}"),
    })
}

/// Reads a row defensively: anything the file holds may be damaged.
fn decode(row: &rusqlite::Row<'_>) -> Result<Stored, String> {
    let text = |e: rusqlite::Error| e.to_string();
    let data: String = row.get(0).map_err(text)?;
    if !data.trim_start().starts_with('{')
        || serde_json::from_str::<serde::de::IgnoredAny>(&data).is_err()
    {
        return Err("data is not a JSON object".into());
    }
    let kind: i64 = row.get(3).map_err(text)?;
    let secs: i64 = row.get(4).map_err(text)?;
    let expiry = match (kind, u64::try_from(secs)) {
        (0, _) => Expiry::Default,
        (1, _) => Expiry::BrowserClose,
        (2, Ok(secs)) => Expiry::Idle(secs),
        _ => return Err(format!("unknown expiry ({kind}, {secs})")),
    };
    let subject: Option<String> = row.get(6).map_err(text)?;
    Ok(Stored {
        record: Record {
            data: data.into_boxed_str(),
            created_at: row.get(1).map_err(text)?,
            expires_at: row.get(2).map_err(text)?,
            expiry,
            seen_at: row.get(5).map_err(text)?,
            subject: subject.map(String::into_boxed_str),
        },
        version: row.get(7).map_err(text)?,
    })
}

fn insert(
    conn: &Connection,
    op: &'static str,
    key: &KeyHash,
    record: &Record,
    idle: Option<u64>,
) -> Result<(), StoreError> {
    let c = Columns::of(record, idle).map_err(|message| StoreError { op, message })?;
    let mut stmt = conn.prepare_cached(INSERT).map_err(sql_error(op))?;
    stmt.execute(&c.row(key)[..]).map_err(|e| {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) {
            StoreError {
                op,
                message: format!("a session is already stored under {key}; not overwritten"),
            }
        } else {
            sql_error(op)(e)
        }
    })?;
    Ok(())
}

/// What an update asks the writer to do if the row is still at `version`.
enum Write {
    Save(Arc<Record>),
    Move(KeyHash, Arc<Record>),
    Delete,
}

/// The answer to a compare-and-swap.
enum Cas {
    Done,
    /// Somebody wrote first: the row as it is now.
    Conflict(Option<Stored>),
}

fn compare_and_swap(
    conn: &Connection,
    key: &KeyHash,
    version: i64,
    write: &Write,
    idle: Option<u64>,
) -> Result<Cas, StoreError> {
    const OP: &str = "update";
    let changed = match write {
        Write::Save(record) => {
            let c = Columns::of(record, idle).map_err(|message| StoreError { op: OP, message })?;
            let mut stmt = conn.prepare_cached(UPDATE_IF).map_err(sql_error(OP))?;
            let mut values = c.row(key).to_vec();
            values.push(&version);
            stmt.execute(&values[..]).map_err(sql_error(OP))?
        }
        Write::Move(..) | Write::Delete => {
            let mut stmt = conn.prepare_cached(DELETE_IF).map_err(sql_error(OP))?;
            stmt.execute(params![&key.0[..], version])
                .map_err(sql_error(OP))?
        }
    };
    if changed == 0 {
        return Ok(Cas::Conflict(select(conn, OP, key)?));
    }
    if let Write::Move(new_key, record) = write {
        // Same savepoint as the delete: a failed insert brings the old row back.
        insert(conn, OP, new_key, record, idle)?;
    }
    Ok(Cas::Done)
}

// ---------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------

type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

fn reader_loop(conn: &Connection, jobs: &Mutex<mpsc::Receiver<ReadJob>>) {
    loop {
        // Held while waiting: the next job goes to whichever reader is free.
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(conn),
            // The store was dropped.
            Err(_) => return,
        }
    }
}

/// A job for the writer thread.
trait WriteJob: Send {
    /// Runs inside the batch's transaction; false when it failed and its
    /// changes must be rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the batch is committed (or failed to be).
    fn finish(self: Box<Self>, commit: Result<(), &StoreError>);
}

struct Job<T, F> {
    op: &'static str,
    work: Option<F>,
    outcome: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return true;
        };
        let outcome = work(conn);
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), &StoreError>) {
        let this = *self;
        let result = match (commit, this.outcome) {
            // The job's own error is the better explanation: it was rolled back either way.
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Err(e), _) => Err(StoreError {
                op: this.op,
                message: e.message.clone(),
            }),
            (Ok(()), None) => Err(StoreError {
                op: this.op,
                message: "the write was never run".into(),
            }),
        };
        let _ = this.reply.send(result);
    }
}

struct Writer {
    conn: Connection,
    jobs: mpsc::Receiver<Box<dyn WriteJob>>,
    clock: Arc<dyn Clock>,
    purge_interval: Duration,
}

impl Writer {
    fn run(self) {
        let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(MAX_BATCH);
        let mut next_purge = Instant::now().checked_add(self.purge_interval);
        // The last periodic chunk was full: more dead rows are waiting.
        let mut purge_more = false;
        loop {
            let wait = match next_purge {
                _ if purge_more => Duration::ZERO,
                Some(at) => at.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            match self.jobs.recv_timeout(wait) {
                Ok(job) => {
                    batch.push(job);
                    while batch.len() < MAX_BATCH {
                        match self.jobs.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let commit = run_batch(&self.conn, &mut batch);
                    for job in batch.drain(..) {
                        job.finish(commit.as_ref().map(|_| ()));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Every sender is gone: the store was dropped.
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Checked after every batch too, so a busy store still purges.
            if purge_more || next_purge.is_some_and(|at| Instant::now() >= at) {
                purge_more = self.purge_chunk();
                if !purge_more {
                    next_purge = Instant::now().checked_add(self.purge_interval);
                }
            }
        }
    }

    /// Deletes up to [`PURGE_CHUNK`] dead rows; true when there may be more.
    fn purge_chunk(&self) -> bool {
        let now = self.clock.now();
        let deleted = self
            .conn
            .prepare_cached(
                "DELETE FROM sessions WHERE key_hash IN \
                 (SELECT key_hash FROM sessions WHERE expires_at <= ?1 LIMIT ?2)",
            )
            .and_then(|mut stmt| stmt.execute(params![now, PURGE_CHUNK]));
        match deleted {
            Ok(n) => {
                if n > 0 {
                    debug!(sessions = n, "expired sessions purged");
                }
                i64::try_from(n).is_ok_and(|n| n >= PURGE_CHUNK)
            }
            Err(e) => {
                warn!(error = %e, "periodic purge of the sqlite store failed; retrying at the next interval");
                false
            }
        }
    }
}

fn exec(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(|_| ())
        .map_err(|e| StoreError {
            op: "commit",
            message: format!("sqlite {sql}: {e}"),
        })
}

/// Runs every job of the batch in one transaction, each in its own savepoint.
fn run_batch(conn: &Connection, batch: &mut [Box<dyn WriteJob>]) -> Result<(), StoreError> {
    if !conn.is_autocommit() {
        // A failed ROLLBACK left a transaction open: without this every later
        // batch would fail to BEGIN.
        exec(conn, "ROLLBACK")?;
    }
    exec(conn, "BEGIN IMMEDIATE")?;
    let result = run_in_transaction(conn, batch);
    if result.is_err() && !conn.is_autocommit() {
        let _ = exec(conn, "ROLLBACK");
    }
    result
}

fn run_in_transaction(
    conn: &Connection,
    batch: &mut [Box<dyn WriteJob>],
) -> Result<(), StoreError> {
    for job in batch.iter_mut() {
        exec(conn, "SAVEPOINT job")?;
        if job.run(conn) {
            exec(conn, "RELEASE job")?;
            continue;
        }
        if conn.is_autocommit() {
            // Some errors (I/O, disk full) end the whole transaction.
            return Err(StoreError {
                op: "commit",
                message: "the transaction was rolled back by a failed write".into(),
            });
        }
        exec(conn, "ROLLBACK TO job")?;
        exec(conn, "RELEASE job")?;
    }
    exec(conn, "COMMIT")
}

// ---------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------

#[async_trait]
impl Backend for SqliteStore {
    async fn load(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
        let now = self.clock.now();
        let Some(stored) = self.fetch("load", id).await? else {
            return Ok(None);
        };
        if !stored.record.is_live(now, self.idle) {
            return Ok(None);
        }
        // Without an idle timeout a read never writes; with one, at most
        // once a second per session.
        if self.idle.is_none() || stored.record.seen_at >= now {
            return Ok(Some(Arc::new(stored.record)));
        }
        let touched = Record {
            seen_at: now,
            ..stored.record.clone()
        };
        let deadline = touched.deadline(self.idle);
        let (key, version) = (*id, stored.version);
        let wrote = self
            .write("load", move |conn| {
                let mut stmt = conn.prepare_cached(TOUCH_IF).map_err(sql_error("load"))?;
                stmt.execute(params![&key.0[..], now, deadline, version])
                    .map_err(sql_error("load"))
            })
            .await?;
        // No row changed: a concurrent write or delete came first, and this
        // read is ordered before it.
        Ok(Some(Arc::new(if wrote == 1 {
            touched
        } else {
            stored.record
        })))
    }

    async fn create(&self, id: &KeyHash, record: Record) -> Result<Arc<Record>, StoreError> {
        let record = Arc::new(record);
        let (key, row, idle) = (*id, record.clone(), self.idle);
        self.write("create", move |conn| {
            insert(conn, "create", &key, &row, idle)
        })
        .await?;
        Ok(record)
    }

    async fn update(
        &self,
        id: &KeyHash,
        new_id: &KeyHash,
        edit: &Edit<'_>,
    ) -> Result<Change, UpdateError> {
        let now = self.clock.now();
        let mut current = self.fetch("update", id).await?;
        for _ in 0..MAX_ATTEMPTS {
            let Some(stored) = current.take() else {
                return Ok(Change::Gone);
            };
            if !stored.record.is_live(now, self.idle) {
                return Ok(Change::Gone);
            }
            let (write, change) = match edit(&stored.record)? {
                Next::Nothing => return Ok(Change::Saved(Arc::new(stored.record))),
                Next::Save {
                    record,
                    rekey: false,
                } => {
                    let record = Arc::new(record);
                    (Write::Save(record.clone()), Change::Saved(record))
                }
                Next::Save {
                    record,
                    rekey: true,
                } => {
                    let record = Arc::new(record);
                    (Write::Move(*new_id, record.clone()), Change::Moved(record))
                }
                Next::Delete => (Write::Delete, Change::Deleted),
            };
            let (key, version, idle) = (*id, stored.version, self.idle);
            let cas = self
                .write("update", move |conn| {
                    compare_and_swap(conn, &key, version, &write, idle)
                })
                .await?;
            match cas {
                Cas::Done => return Ok(change),
                Cas::Conflict(latest) => current = latest,
            }
        }
        Err(StoreError {
            op: "update",
            message: format!(
                "gave up after {MAX_ATTEMPTS} attempts: the session kept changing under concurrent updates"
            ),
        }
        .into())
    }

    async fn delete(&self, id: &KeyHash) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let key = *id;
        self.write("delete", move |conn| {
            let mut stmt = conn
                .prepare_cached("DELETE FROM sessions WHERE key_hash = ?1 RETURNING expires_at")
                .map_err(sql_error("delete"))?;
            let deadline: Option<i64> = stmt
                .query_row([&key.0[..]], |row| row.get(0))
                .optional()
                .map_err(sql_error("delete"))?;
            // A dead row is removed too, but it was no session.
            Ok(deadline.is_some_and(|d| now < d))
        })
        .await
    }

    async fn revoke_subject(&self, subject: &str) -> Result<u64, StoreError> {
        const OP: &str = "revoke_subject";
        let now = self.clock.now();
        let subject = subject.to_owned();
        self.write(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached("DELETE FROM sessions WHERE subject = ?1 RETURNING expires_at")
                .map_err(sql_error(OP))?;
            let mut rows = stmt.query([&subject]).map_err(sql_error(OP))?;
            let mut live = 0;
            while let Some(row) = rows.next().map_err(sql_error(OP))? {
                let deadline: i64 = row.get(0).map_err(sql_error(OP))?;
                live += u64::from(now < deadline);
            }
            Ok(live)
        })
        .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let now = self.clock.now();
        self.read("count", move |conn| {
            let n: i64 = conn
                .prepare_cached("SELECT count(*) FROM sessions WHERE expires_at > ?1")
                .and_then(|mut stmt| stmt.query_row([now], |row| row.get(0)))
                .map_err(sql_error("count"))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn list(&self, limit: usize) -> Result<Vec<(KeyHash, Arc<Record>)>, StoreError> {
        const OP: &str = "list";
        let now = self.clock.now();
        let idle = self.idle;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(OP, move |conn| {
            let mut stmt = conn.prepare_cached(LIST).map_err(sql_error(OP))?;
            let mut rows = stmt.query(params![now, limit]).map_err(sql_error(OP))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(sql_error(OP))? {
                let id: Vec<u8> = row.get(8).map_err(sql_error(OP))?;
                let Ok(id) = <[u8; 32]>::try_from(id) else {
                    continue;
                };
                match decode(row) {
                    Ok(stored) if stored.record.is_live(now, idle) => {
                        out.push((KeyHash(id), Arc::new(stored.record)));
                    }
                    Ok(_) => {}
                    Err(why) => warn!(id = %KeyHash(id), why, "list skipped a corrupt session"),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn peek(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
        let now = self.clock.now();
        Ok(self
            .fetch("peek", id)
            .await?
            .filter(|stored| stored.record.is_live(now, self.idle))
            .map(|stored| Arc::new(stored.record)))
    }

    async fn purge(&self) -> Result<u64, StoreError> {
        let now = self.clock.now();
        self.write("purge", move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")
                .and_then(|mut stmt| stmt.execute([now]))
                .map_err(sql_error("purge"))?;
            Ok(n as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::{Value, json};

    use super::*;
    use crate::clock::ManualClock;
    use crate::session::{Action, ApplyError, Changes, Policy, apply};

    const T0: i64 = 1_700_000_000;
    const POLICY: Policy = Policy {
        max_age: 100,
        expire_at_browser_close: false,
        max_bytes: 4096,
        absolute_timeout: None,
    };

    /// A directory of its own under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "sessionward-sqlite-unit-{}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn db(&self) -> PathBuf {
            self.0.join("sessions.db")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn config(path: &Path) -> SqliteConfig {
        SqliteConfig {
            path: path.to_owned(),
            busy_timeout: Duration::from_secs(5),
            purge_interval: Duration::from_secs(3600),
            synchronous_full: false,
        }
    }

    fn open(path: &Path, idle: Option<u64>, clock: &Arc<ManualClock>) -> SqliteStore {
        SqliteStore::open(&config(path), idle, clock.clone()).unwrap()
    }

    /// Drops the store and waits (with a deadline) until its threads have ended.
    fn close(store: SqliteStore) {
        let threads = store.threads.clone();
        drop(store);
        let deadline = Instant::now() + Duration::from_secs(10);
        while threads.upgrade().is_some() {
            assert!(Instant::now() < deadline, "the store's threads did not end");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn raw(path: &Path) -> Connection {
        Connection::open(path).unwrap()
    }

    fn key() -> KeyHash {
        crate::session::SessionKey::generate().unwrap().hash()
    }

    fn patch(v: Value) -> Changes {
        Changes {
            patches: vec![v],
            ..Default::default()
        }
    }

    /// A new record as the proxy would build it from `changes` at `now`.
    fn fresh(changes: &Changes, now: i64) -> Record {
        match apply(None, changes, &POLICY, now).unwrap() {
            Next::Save { record, .. } => record,
            other => panic!("expected a record, got {other:?}"),
        }
    }

    fn editor(
        changes: Changes,
        now: i64,
    ) -> impl Fn(&Record) -> Result<Next, ApplyError> + Send + Sync {
        move |current| apply(Some(current), &changes, &POLICY, now)
    }

    fn data(record: &Record) -> Value {
        serde_json::from_str(&record.data).unwrap()
    }

    fn row_field(path: &Path, id: &KeyHash, column: &str) -> i64 {
        raw(path)
            .query_row(
                &format!("SELECT {column} FROM sessions WHERE key_hash = ?1"),
                [&id.0[..]],
                |row| row.get(0),
            )
            .unwrap()
    }

    fn rows(path: &Path) -> i64 {
        raw(path)
            .query_row("SELECT count(*) FROM sessions", [], |row| row.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn round_trip_keeps_every_field() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let store = open(&dir.db(), None, &clock);
        let mut record = fresh(&patch(json!({"user": "ann", "n": [1, 2]})), T0);
        record.subject = Some("user:ann".into());
        record.expiry = Expiry::Idle(40);
        record.created_at = T0 - 5;
        let id = key();
        let created = store.create(&id, record.clone()).await.unwrap();
        assert_eq!(*created, record);
        assert_eq!(*store.load(&id).await.unwrap().unwrap(), record);
        assert_eq!(store.load(&key()).await.unwrap(), None, "unknown key");

        let mut other = fresh(&patch(json!({"b": 1})), T0);
        other.expiry = Expiry::BrowserClose;
        let id2 = key();
        store.create(&id2, other.clone()).await.unwrap();
        assert_eq!(*store.load(&id2).await.unwrap().unwrap(), other);
        assert_eq!(store.count().await.unwrap(), 2);
        close(store);
    }

    #[tokio::test]
    async fn create_never_overwrites() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let store = open(&dir.db(), None, &clock);
        let id = key();
        let first = fresh(&patch(json!({"a": 1})), T0);
        store.create(&id, first.clone()).await.unwrap();
        let err = store
            .create(&id, fresh(&patch(json!({"a": 2})), T0))
            .await
            .unwrap_err();
        assert_eq!(err.op, "create");
        assert!(err.message.contains("already stored"), "{err}");
        assert_eq!(*store.load(&id).await.unwrap().unwrap(), first);
        close(store);
    }

    #[tokio::test]
    async fn update_saves_cycles_deletes_and_reports_gone() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let store = open(&dir.db(), None, &clock);
        let (id, new_id) = (key(), key());
        store
            .create(&id, fresh(&patch(json!({"a": 1})), T0))
            .await
            .unwrap();

        clock.advance(1);
        let edit = editor(patch(json!({"b": 2})), T0 + 1);
        let Change::Saved(saved) = store.update(&id, &id, &edit).await.unwrap() else {
            panic!("expected Saved");
        };
        assert_eq!(data(&saved), json!({"a": 1, "b": 2}));
        assert_eq!((saved.seen_at, saved.expires_at), (T0 + 1, T0 + 101));
        assert_eq!(*store.load(&id).await.unwrap().unwrap(), *saved);

        let cycle = Changes {
            action: Some(Action::Cycle),
            ..Default::default()
        };
        let edit = editor(cycle, T0 + 1);
        let Change::Moved(moved) = store.update(&id, &new_id, &edit).await.unwrap() else {
            panic!("expected Moved");
        };
        assert_eq!(data(&moved), json!({"a": 1, "b": 2}));
        assert_eq!(store.load(&id).await.unwrap(), None, "the old key died");
        assert_eq!(*store.load(&new_id).await.unwrap().unwrap(), *moved);
        assert_eq!(
            store.update(&id, &id, &edit).await.unwrap(),
            Change::Gone,
            "the old key cannot be updated"
        );

        // A refused edit writes nothing.
        let huge = editor(patch(json!({"x": "y".repeat(5000)})), T0 + 1);
        let err = store.update(&new_id, &new_id, &huge).await.unwrap_err();
        assert!(
            matches!(err, UpdateError::Apply(ApplyError::TooLarge { .. })),
            "{err}"
        );
        assert_eq!(*store.load(&new_id).await.unwrap().unwrap(), *moved);

        let empty = editor(patch(json!({"a": null, "b": null})), T0 + 1);
        assert_eq!(
            store.update(&new_id, &new_id, &empty).await.unwrap(),
            Change::Deleted
        );
        assert_eq!(store.load(&new_id).await.unwrap(), None);
        assert_eq!(
            store.update(&new_id, &new_id, &empty).await.unwrap(),
            Change::Gone
        );
        assert_eq!(rows(&dir.db()), 0);

        let other = key();
        store
            .create(&other, fresh(&patch(json!({"c": 3})), T0))
            .await
            .unwrap();
        assert!(store.delete(&other).await.unwrap());
        assert!(!store.delete(&other).await.unwrap(), "already deleted");
        close(store);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_move_rolls_back_alone() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let store = Arc::new(open(&dir.db(), None, &clock));
        let (id, taken) = (key(), key());
        let record = fresh(&patch(json!({"a": 1})), T0);
        store.create(&id, record.clone()).await.unwrap();
        store
            .create(&taken, fresh(&patch(json!({"other": 1})), T0))
            .await
            .unwrap();
        // Writes queued alongside, likely committed in the same batch.
        let others: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let id = key();
                    store
                        .create(&id, fresh(&patch(json!({ "i": i })), T0))
                        .await
                        .map(|_| id)
                })
            })
            .collect();
        let cycle = Changes {
            action: Some(Action::Cycle),
            ..Default::default()
        };
        // The move's target exists: its insert fails after its delete ran.
        let err = store
            .update(&id, &taken, &editor(cycle, T0))
            .await
            .unwrap_err();
        assert!(matches!(err, UpdateError::Store(_)), "{err}");
        assert_eq!(
            *store.load(&id).await.unwrap().unwrap(),
            record,
            "not deleted"
        );
        assert_eq!(
            data(&store.load(&taken).await.unwrap().unwrap()),
            json!({"other": 1}),
            "not overwritten"
        );
        for task in others {
            let id = task.await.unwrap().unwrap();
            assert!(store.load(&id).await.unwrap().is_some());
        }
        close(Arc::into_inner(store).unwrap());
    }

    #[tokio::test]
    async fn expiry_is_honoured_to_the_second() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let store = open(&dir.db(), None, &clock);
        let id = key();
        let mut changes = patch(json!({"a": 1}));
        changes.expiry = Some(Expiry::Idle(10));
        store.create(&id, fresh(&changes, T0)).await.unwrap();

        clock.advance(9);
        assert!(store.load(&id).await.unwrap().is_some(), "alive at +9");
        assert_eq!(store.count().await.unwrap(), 1);
        clock.advance(1);
        assert_eq!(store.load(&id).await.unwrap(), None, "dead at +10");
        assert_eq!(store.count().await.unwrap(), 0);
        let edit = editor(patch(json!({"b": 1})), T0 + 10);
        assert_eq!(store.update(&id, &id, &edit).await.unwrap(), Change::Gone);
        assert!(
            !store.delete(&id).await.unwrap(),
            "a dead row is no session"
        );
        close(store);
    }

    #[tokio::test]
    async fn idle_timeout_slides_on_load_at_most_once_a_second() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let store = open(&dir.db(), Some(30), &clock);
        let id = key();
        store
            .create(&id, fresh(&patch(json!({"a": 1})), T0))
            .await
            .unwrap();
        assert_eq!(row_field(&dir.db(), &id, "expires_at"), T0 + 30);

        clock.advance(20);
        let loaded = store.load(&id).await.unwrap().unwrap();
        assert_eq!(loaded.seen_at, T0 + 20);
        assert_eq!(row_field(&dir.db(), &id, "seen_at"), T0 + 20);
        assert_eq!(row_field(&dir.db(), &id, "expires_at"), T0 + 50);
        let version = row_field(&dir.db(), &id, "version");
        store.load(&id).await.unwrap().unwrap();
        assert_eq!(
            row_field(&dir.db(), &id, "version"),
            version,
            "a second load in the same second does not write"
        );

        clock.advance(29);
        assert!(
            store.load(&id).await.unwrap().is_some(),
            "refreshed: alive at +49"
        );
        clock.advance(30);
        assert_eq!(store.load(&id).await.unwrap(), None, "idle for 30 s");
        assert_eq!(store.purge().await.unwrap(), 1);
        close(store);
    }

    #[tokio::test]
    async fn without_idle_timeout_a_load_never_writes() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let store = open(&dir.db(), None, &clock);
        let id = key();
        store
            .create(&id, fresh(&patch(json!({"a": 1})), T0))
            .await
            .unwrap();
        clock.advance(50);
        assert_eq!(store.load(&id).await.unwrap().unwrap().seen_at, T0);
        assert_eq!(row_field(&dir.db(), &id, "seen_at"), T0);
        assert_eq!(row_field(&dir.db(), &id, "version"), 1);
        close(store);
    }

    #[tokio::test]
    async fn purge_removes_dead_sessions_only() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let store = open(&dir.db(), None, &clock);
        for secs in [5, 10, 11] {
            let mut changes = patch(json!({"secs": secs}));
            changes.expiry = Some(Expiry::Idle(secs));
            store.create(&key(), fresh(&changes, T0)).await.unwrap();
        }
        clock.advance(10);
        assert_eq!(store.count().await.unwrap(), 1);
        assert_eq!(rows(&dir.db()), 3, "dead rows stay until purged");
        assert_eq!(store.purge().await.unwrap(), 2);
        assert_eq!(store.purge().await.unwrap(), 0);
        assert_eq!(rows(&dir.db()), 1);
        assert_eq!(store.count().await.unwrap(), 1);
        close(store);
    }

    #[tokio::test]
    async fn periodic_purge_runs_on_the_stores_thread() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let config = SqliteConfig {
            purge_interval: Duration::from_millis(20),
            ..config(&dir.db())
        };
        let store = SqliteStore::open(&config, None, clock.clone()).unwrap();
        let mut changes = patch(json!({"a": 1}));
        changes.expiry = Some(Expiry::Idle(1));
        store.create(&key(), fresh(&changes, T0)).await.unwrap();
        let live = key();
        store
            .create(&live, fresh(&patch(json!({"b": 1})), T0))
            .await
            .unwrap();
        clock.advance(5);
        let deadline = Instant::now() + Duration::from_secs(10);
        while rows(&dir.db()) > 1 {
            assert!(Instant::now() < deadline, "no periodic purge");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(store.load(&live).await.unwrap().is_some());
        close(store);
    }

    #[tokio::test]
    async fn revoke_subject_deletes_that_subjects_sessions_only() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let store = open(&dir.db(), None, &clock);
        let mut ids = Vec::new();
        for subject in ["user:1", "user:1", "user:2"] {
            let mut changes = patch(json!({"a": 1}));
            changes.subject = Some(Some(subject.into()));
            let id = key();
            store.create(&id, fresh(&changes, T0)).await.unwrap();
            ids.push(id);
        }
        let untagged = key();
        store
            .create(&untagged, fresh(&patch(json!({"a": 1})), T0))
            .await
            .unwrap();
        assert_eq!(store.revoke_subject("user:1").await.unwrap(), 2);
        assert_eq!(store.revoke_subject("user:1").await.unwrap(), 0);
        assert_eq!(store.load(&ids[0]).await.unwrap(), None);
        assert_eq!(store.load(&ids[1]).await.unwrap(), None);
        assert!(store.load(&ids[2]).await.unwrap().is_some());
        assert!(store.load(&untagged).await.unwrap().is_some());
        assert_eq!(store.count().await.unwrap(), 2);
        close(store);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_disjoint_updates_are_all_kept() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let store = Arc::new(open(&dir.db(), None, &clock));
        let id = key();
        store
            .create(&id, fresh(&patch(json!({"init": true})), T0))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let edit = editor(patch(json!({ format!("k{i}"): i })), T0);
                    store.update(&id, &id, &edit).await
                })
            })
            .collect();
        for task in tasks {
            assert!(matches!(task.await.unwrap().unwrap(), Change::Saved(_)));
        }
        let record = store.load(&id).await.unwrap().unwrap();
        let data = data(&record);
        let map = data.as_object().unwrap();
        assert_eq!(map.len(), 33, "{data}");
        for i in 0..32 {
            assert_eq!(map[&format!("k{i}")], json!(i));
        }
        let store = Arc::into_inner(store).unwrap();
        close(store);
    }

    #[tokio::test]
    async fn reopening_after_drop_keeps_the_data() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let store = open(&dir.db(), None, &clock);
        let id = key();
        let record = fresh(&patch(json!({"kept": "yes"})), T0);
        store.create(&id, record.clone()).await.unwrap();
        close(store);

        let store = open(&dir.db(), None, &clock);
        assert_eq!(*store.load(&id).await.unwrap().unwrap(), record);
        close(store);
        let integrity: String = raw(&dir.db())
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(integrity, "ok");
    }

    #[tokio::test]
    async fn a_changed_idle_timeout_recomputes_the_deadlines() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let store = open(&dir.db(), Some(10), &clock);
        let id = key();
        store
            .create(&id, fresh(&patch(json!({"a": 1})), T0))
            .await
            .unwrap();
        close(store);

        clock.advance(20);
        let store = open(&dir.db(), None, &clock);
        assert_eq!(
            store.count().await.unwrap(),
            1,
            "alive without idle timeout"
        );
        assert_eq!(store.purge().await.unwrap(), 0, "not purged as idle");
        assert!(store.load(&id).await.unwrap().is_some());
        close(store);

        let store = open(&dir.db(), Some(10), &clock);
        assert_eq!(store.count().await.unwrap(), 0, "idle for 20 s");
        assert_eq!(store.purge().await.unwrap(), 1);
        close(store);
    }

    #[test]
    fn a_newer_schema_version_is_refused() {
        let dir = TempDir::new();
        raw(&dir.db())
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
        let err = SqliteStore::open(&config(&dir.db()), None, clock).unwrap_err();
        assert_eq!(err.op, "open");
        assert!(err.message.contains("newer sessionward"), "{err}");
        assert!(err.message.contains("sessions.db"), "{err}");
        let version: i64 = raw(&dir.db())
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION + 1, "left untouched");
    }

    #[tokio::test]
    async fn a_busy_timeout_too_long_for_sqlite_is_cut_not_a_panic() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let config = SqliteConfig {
            busy_timeout: Duration::from_secs(999_999_999),
            ..config(&dir.db())
        };
        let store = SqliteStore::open(&config, None, clock.clone()).unwrap();
        store
            .create(&key(), fresh(&patch(json!({"a": 1})), T0))
            .await
            .unwrap();
        close(store);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused() {
        let dir = TempDir::new();
        std::fs::write(dir.db(), "x".repeat(4096)).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
        let err = SqliteStore::open(&config(&dir.db()), None, clock).unwrap_err();
        assert!(err.message.contains("sessions.db"), "{err}");
        assert!(err.message.contains("not a database"), "{err}");
    }

    #[tokio::test]
    async fn a_corrupt_row_is_an_error_for_that_session_only() {
        let dir = TempDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let store = open(&dir.db(), None, &clock);
        let (bad_data, bad_expiry, good) = (key(), key(), key());
        for id in [&bad_data, &bad_expiry, &good] {
            store
                .create(id, fresh(&patch(json!({"a": 1})), T0))
                .await
                .unwrap();
        }
        let conn = raw(&dir.db());
        conn.execute(
            "UPDATE sessions SET data = '[1, 2' WHERE key_hash = ?1",
            [&bad_data.0[..]],
        )
        .unwrap();
        conn.execute(
            "UPDATE sessions SET expiry_kind = 9 WHERE key_hash = ?1",
            [&bad_expiry.0[..]],
        )
        .unwrap();
        drop(conn);
        for id in [&bad_data, &bad_expiry] {
            let err = store.load(id).await.unwrap_err();
            assert!(err.message.contains("corrupt"), "{err}");
            let edit = editor(patch(json!({"b": 1})), T0);
            let err = store.update(id, id, &edit).await.unwrap_err();
            assert!(matches!(err, UpdateError::Store(_)), "{err}");
        }
        assert!(store.load(&good).await.unwrap().is_some());
        close(store);
    }
}
