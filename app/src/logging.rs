//! JSON lines to a rotating file: `slog` -> the line rendered (slog-json) on the thread that
//! logs -> `slog-async` -> a batching writer -> `file-rotate`.
//!
//! Guarantees, and how they are kept:
//! - **No record lost under load.** The async channel uses [`OverflowStrategy::Block`]: when
//!   the writer falls behind, the request that logs waits instead of its line being dropped.
//!   That is back-pressure rather than loss, and it only happens if the disk stalls, since
//!   formatting and appending a line costs far less than serving the request. The only way a
//!   record can still be lost is a failing write (disk full, directory removed); those are
//!   counted in `app_log_records_dropped_total` and reported on stderr.
//! - **No record lost at shutdown.** [`LogGuard`] joins the async worker (which drains the
//!   channel first), then writes what is still batched.
//! - **No line split across files.** `file-rotate` uses `ContentLimit::BytesSurpassed`, which
//!   only rotates *between* writes, and every write it gets holds whole lines. (`Bytes` would
//!   cut a line at the exact size; `Lines` would count lines, not bytes.) A file may therefore
//!   exceed `--log-max-bytes` by at most one batch.
//! - **Rename-based rotation**: the live file keeps its name, older ones become `.1` (newest)
//!   to `.N`, which is what log shippers like promtail expect.
//! - **Cheap on the request path**: lines are batched and written every [`FLUSH_INTERVAL`] or
//!   when [`MAX_BATCH_BYTES`] accumulate, not one `write(2)` per line.
//! - **Cheap to queue**: slog-async copies every value of a queued record into its own
//!   allocation, so a record crosses the channel as one finished line, not ten fields.
//! - `time` is stamped when the line is rendered, on the thread that logs. Lines from two
//!   worker threads can reach the file microseconds out of order; Loki accepts that
//!   (unordered writes are its default since 2.4), and Promtail takes the time from the line.

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use prometheus::IntCounter;
use slog::{o, Drain, FnValue, Logger, OwnedKVList, PushFnValue, Record, KV};
use slog_async::{Async, AsyncGuard, OverflowStrategy};

/// Log files are readable by the owner and the log shipper's group, nobody else.
pub const FILE_MODE: u32 = 0o640;
/// How long a line may sit in the batch before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// A batch is written as soon as it holds this much.
pub const MAX_BATCH_BYTES: usize = 32 * 1024;
/// Records the async channel holds before logging callers wait (see the module docs).
const CHANNEL_RECORDS: usize = 8192;

/// Where and how much to log.
#[derive(Debug, Clone)]
pub struct LogFileConfig {
    pub path: PathBuf,
    /// Rotate once the live file is larger than this.
    pub max_bytes: u64,
    /// Rotated files kept besides the live one.
    pub keep: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log file path {0} has no file name; pass a file, e.g. --log-file /var/log/demo-app/app.log")]
    NoFileName(PathBuf),
    #[error(
        "cannot create log directory {path}: {source}; create it or choose another --log-file"
    )]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot open log file {path} for appending: {source}; check its permissions or choose another --log-file")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot start the log writer thread: {0}")]
    Thread(io::Error),
}

/// Flushes every log record when dropped; keep it alive in `main` until the very end.
pub struct LogGuard {
    async_guard: Option<AsyncGuard>,
    batch: Arc<Batch>,
    stop_flusher: Option<mpsc::Sender<()>>,
    flusher: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // Order matters: the async worker drains its channel into the batch, then the
        // flusher stops, then the last batch is written.
        drop(self.async_guard.take());
        drop(self.stop_flusher.take());
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        self.batch.write_out();
    }
}

/// Opens the log file and returns the root logger and the guard that flushes it.
/// Records that cannot be written are counted in `dropped`.
pub fn open(config: &LogFileConfig, dropped: IntCounter) -> Result<(Logger, LogGuard), LogError> {
    let file = open_rotating(config)?;
    let batch = Arc::new(Batch {
        state: Mutex::new(BatchState {
            file,
            pending: Vec::with_capacity(MAX_BATCH_BYTES * 2),
            pending_records: 0,
            failing: false,
        }),
        threshold: MAX_BATCH_BYTES.min(usize::try_from(config.max_bytes).unwrap_or(usize::MAX)),
        dropped: dropped.clone(),
    });

    let file_drain = LineWriter {
        batch: batch.clone(),
    };
    let (async_drain, async_guard) = Async::new(file_drain)
        .chan_size(CHANNEL_RECORDS)
        .overflow_strategy(OverflowStrategy::Block)
        .thread_name("log-writer".into())
        .build_with_guard();

    let (stop_flusher, stopped) = mpsc::channel::<()>();
    let flusher_batch = batch.clone();
    let flusher = std::thread::Builder::new()
        .name("log-flusher".into())
        .spawn(move || {
            // Wakes every interval until the guard drops the sender.
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_INTERVAL) {
                flusher_batch.write_out();
            }
        })
        .map_err(LogError::Thread)?;

    let logger = Logger::root(
        RenderThenQueue {
            queue: async_drain,
            dropped,
        },
        o!(),
    );
    let guard = LogGuard {
        async_guard: Some(async_guard),
        batch,
        stop_flusher: Some(stop_flusher),
        flusher: Some(flusher),
    };
    Ok((logger, guard))
}

/// Creates the directory, checks the file can be opened for appending (file-rotate would
/// otherwise swallow the error and discard every line), and sets its mode.
fn open_rotating(config: &LogFileConfig) -> Result<FileRotate<AppendCount>, LogError> {
    let path = &config.path;
    if path.file_name().is_none() {
        return Err(LogError::NoFileName(path.clone()));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|source| LogError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let open_error = |source| LogError::Open {
        path: path.clone(),
        source,
    };
    let probe = append_options().open(path).map_err(open_error)?;
    // `mode` only applies to new files; an existing file is brought to the same mode.
    probe
        .set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(open_error)?;
    drop(probe);

    let absolute = absolute(path);
    Ok(FileRotate::new(
        absolute,
        AppendCount::new(config.keep),
        ContentLimit::BytesSurpassed(usize::try_from(config.max_bytes).unwrap_or(usize::MAX)),
        Compression::None,
        Some(append_options()),
    ))
}

/// file-rotate requires read + create + append.
fn append_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).create(true).append(true).mode(FILE_MODE);
    options
}

/// file-rotate needs a path with a parent directory.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whole lines waiting to be written, shared by the async worker and the flusher thread.
struct Batch {
    state: Mutex<BatchState>,
    threshold: usize,
    dropped: IntCounter,
}

struct BatchState {
    file: FileRotate<AppendCount>,
    pending: Vec<u8>,
    pending_records: u64,
    /// Whether the last write failed, so stderr hears about a failure once, not per batch.
    failing: bool,
}

impl Batch {
    fn lock(&self) -> MutexGuard<'_, BatchState> {
        // A panic while holding the lock leaves plain bytes behind, still safe to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one complete line; writes the batch once it is big enough.
    fn push_line(&self, line: &[u8]) {
        let mut state = self.lock();
        state.pending.extend_from_slice(line);
        state.pending_records += 1;
        if state.pending.len() >= self.threshold {
            self.write_locked(&mut state);
        }
    }

    fn write_out(&self) {
        let mut state = self.lock();
        if !state.pending.is_empty() {
            self.write_locked(&mut state);
        }
    }

    fn write_locked(&self, state: &mut BatchState) {
        let BatchState {
            file,
            pending,
            pending_records,
            failing,
        } = state;
        // One write per batch of whole lines: file-rotate only rotates between writes.
        let result = file.write_all(pending).and_then(|()| file.flush());
        match result {
            Ok(()) => {
                if *failing {
                    eprintln!("demo-app: writing the log file works again");
                }
                *failing = false;
            }
            Err(error) => {
                self.dropped.inc_by(*pending_records);
                if !*failing {
                    eprintln!(
                        "demo-app: cannot write the log file ({error}); lines are being dropped and counted in app_log_records_dropped_total"
                    );
                }
                *failing = true;
            }
        }
        pending.clear();
        *pending_records = 0;
    }
}

thread_local! {
    /// Each logging thread's JSON formatter and line buffer: slog-json's drain is not `Sync`,
    /// and one per thread needs no lock.
    static RENDERER: Renderer = Renderer::new();
}

/// slog-json, configured for our lines, writing into a buffer this thread reuses.
struct Renderer {
    json: slog_json::Json<SharedLine>,
    line: Rc<RefCell<Vec<u8>>>,
}

impl Renderer {
    fn new() -> Renderer {
        let line = Rc::new(RefCell::new(Vec::with_capacity(512)));
        let json = slog_json::Json::new(SharedLine(line.clone()))
            .set_newlines(true)
            .add_key_value(o!(
                "time" => FnValue(|_: &Record| {
                    time::OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .ok()
                }),
                "level" => FnValue(|record: &Record| record.level().as_str()),
                "msg" => PushFnValue(|record: &Record, ser| ser.emit(record.msg())),
            ))
            .build();
        Renderer { json, line }
    }

    /// Renders one record as a JSON line and hands it to `then`; `None` if it cannot be
    /// rendered (a value whose serialisation fails).
    fn render<T>(
        &self,
        record: &Record,
        values: &OwnedKVList,
        then: impl FnOnce(&str) -> T,
    ) -> Option<T> {
        self.line.borrow_mut().clear();
        self.json.log(record, values).ok()?;
        let line = self.line.borrow();
        std::str::from_utf8(&line).ok().map(then)
    }
}

/// The renderer's output: a handle on the thread's line buffer.
struct SharedLine(Rc<RefCell<Vec<u8>>>);

impl Write for SharedLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The key of the one value a queued record carries: its finished line.
const LINE_KEY: &str = "line";

/// The root drain: renders the record on the thread that logs it, then queues the finished
/// line through slog-async. slog-async copies every value of a record it queues into an
/// allocation of its own; a rendered line is one value instead of one per field, which
/// halved logging's share of the CPU per request in the benchmark. Records that cannot be
/// rendered, or queued once the writer is gone (after shutdown), are counted as dropped.
struct RenderThenQueue {
    queue: Async,
    dropped: IntCounter,
}

impl Drain for RenderThenQueue {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        let queued = RENDERER.with(|renderer| {
            renderer.render(record, values, |line| {
                let statics = slog::RecordStatic {
                    location: record.location(),
                    tag: record.tag(),
                    level: record.level(),
                };
                let kv = slog::SingleKV::from((LINE_KEY, line));
                // The logger's values are in the line already; passing them on only costs
                // slog-async a reference count.
                self.queue
                    .log(
                        &Record::new(&statics, &format_args!(""), slog::BorrowedKV(&kv)),
                        values,
                    )
                    .is_ok()
            })
        });
        if queued != Some(true) {
            self.dropped.inc();
        }
        Ok(())
    }
}

/// The writer thread's drain: appends each queued line to the batch.
struct LineWriter {
    batch: Arc<Batch>,
}

impl Drain for LineWriter {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, _: &OwnedKVList) -> Result<(), slog::Never> {
        let mut take = TakeLine(&self.batch);
        // TakeLine never fails.
        let _ = record.kv().serialize(record, &mut take);
        Ok(())
    }
}

/// Pushes the value of [`LINE_KEY`] to the batch; a rendered line is whole and ends in `\n`.
struct TakeLine<'a>(&'a Batch);

impl slog::Serializer for TakeLine<'_> {
    fn emit_str(&mut self, key: slog::Key, line: &str) -> slog::Result {
        if key == LINE_KEY {
            self.0.push_line(line.as_bytes());
        }
        Ok(())
    }

    fn emit_arguments(&mut self, _: slog::Key, _: &std::fmt::Arguments) -> slog::Result {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::info;

    fn config(dir: &Path, max_bytes: u64, keep: usize) -> LogFileConfig {
        LogFileConfig {
            path: dir.join("logs/app.log"),
            max_bytes,
            keep,
        }
    }

    #[test]
    fn lines_are_json_and_flushed_by_the_guard() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 1 << 20, 2);
        let dropped = IntCounter::new("d", "d").unwrap();
        let (logger, guard) = open(&config, dropped.clone()).unwrap();
        for i in 0..100 {
            info!(logger, "hello"; "i" => i);
        }
        drop(logger);
        drop(guard);
        let text = std::fs::read_to_string(&config.path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 100);
        assert_eq!(lines[7]["i"], 7);
        assert_eq!(lines[7]["msg"], "hello");
        assert_eq!(lines[7]["level"], "INFO");
        assert!(lines[7]["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(dropped.get(), 0);
        let mode = std::fs::metadata(&config.path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, FILE_MODE);
    }

    /// A value that cannot be serialised.
    struct Unserialisable;

    impl slog::Value for Unserialisable {
        fn serialize(
            &self,
            _: &Record,
            _: slog::Key,
            _: &mut dyn slog::Serializer,
        ) -> slog::Result {
            Err(slog::Error::Other)
        }
    }

    #[test]
    fn a_record_that_cannot_be_rendered_is_counted_and_leaves_no_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 1 << 20, 2);
        let dropped = IntCounter::new("d", "d").unwrap();
        let (logger, guard) = open(&config, dropped.clone()).unwrap();
        info!(logger, "before"; "i" => 1);
        info!(logger, "broken"; "i" => 2, "bad" => Unserialisable);
        info!(logger, "after"; "i" => 3);
        drop(logger);
        drop(guard);
        let text = std::fs::read_to_string(&config.path).unwrap();
        let numbers: Vec<i64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["i"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(numbers, [1, 3]);
        assert_eq!(dropped.get(), 1);
    }

    #[test]
    fn rotation_keeps_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 300, 500);
        let (logger, guard) = open(&config, IntCounter::new("d", "d").unwrap()).unwrap();
        for i in 0..200 {
            info!(logger, "line"; "i" => i, "padding" => "xxxxxxxxxxxxxxxxxxxxxxxx");
        }
        drop(logger);
        drop(guard);
        let mut seen = Vec::new();
        for n in (1..=500).rev() {
            let rotated = config.path.with_file_name(format!("app.log.{n}"));
            if let Ok(text) = std::fs::read_to_string(rotated) {
                assert!(text.ends_with('\n'));
                seen.extend(text.lines().map(str::to_owned));
            }
        }
        seen.extend(
            std::fs::read_to_string(&config.path)
                .unwrap()
                .lines()
                .map(str::to_owned),
        );
        let numbers: Vec<i64> = seen
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["i"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(numbers, (0..200).collect::<Vec<_>>());
        assert!(
            config.path.with_file_name("app.log.5").exists(),
            "rotated at least 5 times"
        );
    }

    #[test]
    fn an_unwritable_location_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let config = LogFileConfig {
            path: blocker.join("app.log"),
            max_bytes: 10,
            keep: 1,
        };
        let error = open(&config, IntCounter::new("d", "d").unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("cannot create log directory"), "{error}");
    }
}
