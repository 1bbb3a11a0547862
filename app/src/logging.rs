//! JSON lines to a rotating file: `slog` -> each record rendered as one JSON line
//! ([`json_line`]) on the thread that logs it -> an outbox of whole lines -> `slog-async`
//! carries full outboxes to its writer thread -> `file-rotate`.
//!
//! Guarantees, and how they are kept:
//! - **No record lost under load.** The async channel uses [`OverflowStrategy::Block`]: when
//!   the writer falls behind, the request that hands over a full outbox waits (and the
//!   requests behind it wait for the outbox) instead of lines being dropped. That is
//!   back-pressure rather than loss, and it only happens if the disk stalls. The only way a
//!   line can still be lost is a failing write (disk full, directory removed); those lines
//!   are counted in `app_log_records_dropped_total` and reported on stderr.
//! - **No record lost at shutdown.** [`LogGuard`] stops the flusher, hands over what is
//!   still in the outbox, then joins the async worker, which drains its channel first.
//!   A record logged after that is counted as dropped, never silently discarded.
//! - **No line split across files.** `file-rotate` uses `ContentLimit::BytesSurpassed`, which
//!   only rotates *between* writes, and every write it gets is a chunk of whole lines.
//!   (`Bytes` would cut a line at the exact size; `Lines` would count lines, not bytes.) A
//!   file may therefore exceed `--log-max-bytes` by at most one chunk.
//! - **Rename-based rotation**: the live file keeps its name, older ones become `.1` (newest)
//!   to `.N`, which is what log shippers like promtail expect.
//! - **Cheap on the request path**: a request renders its line and appends it to the
//!   outbox, nothing more. slog-async copies every value of a record it queues into an
//!   allocation of its own and wakes its thread; doing that for every line cost as much CPU
//!   as rendering the line, so it is done once per chunk: when [`MAX_CHUNK_BYTES`] have
//!   accumulated, or every [`FLUSH_INTERVAL`] for whatever has. The writer thread makes one
//!   `write(2)` per chunk.
//! - **In order**: lines enter the outbox under its lock and chunks are handed over under
//!   the same lock, so the file holds lines in the order they were logged. `time` is
//!   stamped when the line is rendered, so two worker threads can still produce lines a few
//!   microseconds out of time order; Loki accepts that (unordered writes are its default
//!   since 2.4), and Promtail takes the time from the line.

use std::cell::{Cell, RefCell};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use prometheus::IntCounter;
use slog::{o, Drain, Logger, OwnedKVList, Record, KV};
use slog_async::{Async, AsyncGuard, OverflowStrategy};

use crate::json_line;

/// Log files are readable by the owner and the log shipper's group, nobody else.
pub const FILE_MODE: u32 = 0o640;
/// How long a line may wait in the outbox before it is handed to the writer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// The outbox is handed to the writer as soon as it holds this much.
pub const MAX_CHUNK_BYTES: usize = 32 * 1024;
/// Chunks the async channel holds before logging callers wait (see the module docs): at
/// most 2 MiB of lines queued in memory.
const CHANNEL_CHUNKS: usize = 64;

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

/// Writes every log record when dropped; keep it alive in `main` until the very end.
pub struct LogGuard {
    outbox: Arc<Outbox>,
    stop_flusher: Option<mpsc::Sender<()>>,
    flusher: Option<JoinHandle<()>>,
    async_guard: Option<AsyncGuard>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // Order matters: the flusher stops, the outbox hands over its last chunk and
        // closes, then the async worker drains its channel into the file.
        drop(self.stop_flusher.take());
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        self.outbox.close();
        drop(self.async_guard.take());
    }
}

/// Opens the log file and returns the root logger and the guard that flushes it.
/// Records that cannot be written are counted in `dropped`.
pub fn open(config: &LogFileConfig, dropped: IntCounter) -> Result<(Logger, LogGuard), LogError> {
    let file = open_rotating(config)?;
    let writer = ChunkWriter {
        file: RefCell::new(file),
        failing: Cell::new(false),
        dropped: dropped.clone(),
    };
    let (queue, async_guard) = Async::new(writer)
        .chan_size(CHANNEL_CHUNKS)
        .overflow_strategy(OverflowStrategy::Block)
        .thread_name("log-writer".into())
        .build_with_guard();
    let outbox = Arc::new(Outbox {
        state: Mutex::new(OutboxState {
            lines: String::with_capacity(MAX_CHUNK_BYTES * 2),
            closed: false,
        }),
        threshold: MAX_CHUNK_BYTES.min(usize::try_from(config.max_bytes).unwrap_or(usize::MAX)),
        queue,
        no_values: o!().into(),
        dropped: dropped.clone(),
    });

    let (stop_flusher, stopped) = mpsc::channel::<()>();
    let flusher_outbox = outbox.clone();
    let flusher = std::thread::Builder::new()
        .name("log-flusher".into())
        .spawn(move || {
            // Wakes every interval until the guard drops the sender.
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_INTERVAL) {
                flusher_outbox.hand_over();
            }
        })
        .map_err(LogError::Thread)?;

    let logger = Logger::root(
        RenderToOutbox {
            outbox: outbox.clone(),
            dropped,
        },
        o!(),
    );
    let guard = LogGuard {
        outbox,
        stop_flusher: Some(stop_flusher),
        flusher: Some(flusher),
        async_guard: Some(async_guard),
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

/// Whole lines waiting to be handed to the writer thread, shared by every logging thread
/// and the flusher.
struct Outbox {
    state: Mutex<OutboxState>,
    /// Hand over once this many bytes are waiting.
    threshold: usize,
    queue: Async,
    /// A chunk carries no logger values; this is the empty list it is queued with.
    no_values: OwnedKVList,
    dropped: IntCounter,
}

struct OutboxState {
    /// Whole lines, each ending in `\n`.
    lines: String,
    /// Set by the guard; the writer is gone, so later lines can only be counted.
    closed: bool,
}

/// The key of the one value a queued chunk carries: its lines.
const CHUNK_KEY: &str = "chunk";

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // A panic while holding the lock leaves whole lines behind, still safe to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds one complete line; hands the outbox over once it is big enough.
    fn push_line(&self, line: &str) {
        let mut state = self.lock();
        if state.closed {
            self.dropped.inc();
            return;
        }
        state.lines.push_str(line);
        if state.lines.len() >= self.threshold {
            self.hand_over_locked(&mut state);
        }
    }

    /// Hands whatever is waiting to the writer (the flusher calls this).
    fn hand_over(&self) {
        let mut state = self.lock();
        self.hand_over_locked(&mut state);
    }

    /// Hands over the last lines and refuses (and counts) any that come later.
    fn close(&self) {
        let mut state = self.lock();
        self.hand_over_locked(&mut state);
        state.closed = true;
    }

    /// Queues the waiting lines as one record. Called with the lock held, so chunks reach
    /// the writer in the order their lines were logged.
    fn hand_over_locked(&self, state: &mut OutboxState) {
        if state.lines.is_empty() {
            return;
        }
        let statics = slog::record_static!(slog::Level::Info, "");
        let kv = slog::SingleKV::from((CHUNK_KEY, state.lines.as_str()));
        let queued = self.queue.log(
            &Record::new(&statics, &format_args!(""), slog::BorrowedKV(&kv)),
            &self.no_values,
        );
        if queued.is_err() {
            self.dropped.inc_by(line_count(&state.lines));
        }
        state.lines.clear();
    }
}

thread_local! {
    /// Each logging thread's line buffer, reused from line to line.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

/// The root drain: renders the record on the thread that logs it and appends the line to
/// the outbox. A record that cannot be rendered is counted as dropped.
struct RenderToOutbox {
    outbox: Arc<Outbox>,
    dropped: IntCounter,
}

impl Drain for RenderToOutbox {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut line) => self.render_and_push(record, values, &mut line),
            // A value whose rendering logs a line of its own: that line gets its own buffer.
            Err(_) => self.render_and_push(record, values, &mut String::new()),
        });
        Ok(())
    }
}

impl RenderToOutbox {
    fn render_and_push(&self, record: &Record, values: &OwnedKVList, line: &mut String) {
        line.clear();
        match json_line::render(record, values, line) {
            Ok(()) => self.outbox.push_line(line),
            Err(_) => self.dropped.inc(),
        }
    }
}

/// The writer thread's drain: one write of whole lines per chunk. Only slog-async's worker
/// thread calls it, hence `RefCell` and `Cell`.
struct ChunkWriter {
    file: RefCell<FileRotate<AppendCount>>,
    /// Whether the last write failed, so stderr hears about a failure once, not per chunk.
    failing: Cell<bool>,
    dropped: IntCounter,
}

impl ChunkWriter {
    fn write(&self, chunk: &str) {
        let mut file = self.file.borrow_mut();
        // One write per chunk of whole lines: file-rotate only rotates between writes.
        let result = file.write_all(chunk.as_bytes()).and_then(|()| file.flush());
        match result {
            Ok(()) if self.failing.replace(false) => {
                eprintln!("demo-app: writing the log file works again");
            }
            Ok(()) => {}
            Err(error) => {
                self.dropped.inc_by(line_count(chunk));
                if !self.failing.replace(true) {
                    eprintln!(
                        "demo-app: cannot write the log file ({error}); lines are being dropped and counted in app_log_records_dropped_total"
                    );
                }
            }
        }
    }
}

impl Drain for ChunkWriter {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, _: &OwnedKVList) -> Result<(), slog::Never> {
        // WriteChunk never fails.
        let _ = record.kv().serialize(record, &mut WriteChunk(self));
        Ok(())
    }
}

/// Hands the value of [`CHUNK_KEY`] to the writer.
struct WriteChunk<'a>(&'a ChunkWriter);

impl slog::Serializer for WriteChunk<'_> {
    fn emit_str(&mut self, key: slog::Key, chunk: &str) -> slog::Result {
        if key == CHUNK_KEY {
            self.0.write(chunk);
        }
        Ok(())
    }

    fn emit_arguments(&mut self, _: slog::Key, _: &std::fmt::Arguments) -> slog::Result {
        Ok(())
    }
}

/// How many lines a chunk holds: every rendered line ends in the one `\n` it contains
/// ([`json_line`] escapes newlines inside values).
fn line_count(chunk: &str) -> u64 {
    chunk.bytes().filter(|&byte| byte == b'\n').count() as u64
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

    /// A log in `dir` (1 MiB files, 2 kept) and the counter of what it dropped.
    fn open_in(dir: &Path) -> (LogFileConfig, IntCounter, Logger, LogGuard) {
        let config = config(dir, 1 << 20, 2);
        let dropped = IntCounter::new("d", "d").unwrap();
        let (logger, guard) = open(&config, dropped.clone()).unwrap();
        (config, dropped, logger, guard)
    }

    /// The `i` field of each JSON line, in order.
    fn numbers<L: AsRef<str>>(lines: impl IntoIterator<Item = L>) -> Vec<i64> {
        lines
            .into_iter()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line.as_ref()).unwrap()["i"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn lines_are_json_and_flushed_by_the_guard() {
        let dir = tempfile::tempdir().unwrap();
        let (config, dropped, logger, guard) = open_in(dir.path());
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
        let (config, dropped, logger, guard) = open_in(dir.path());
        info!(logger, "before"; "i" => 1);
        info!(logger, "broken"; "i" => 2, "bad" => Unserialisable);
        info!(logger, "after"; "i" => 3);
        drop(logger);
        drop(guard);
        let text = std::fs::read_to_string(&config.path).unwrap();
        assert_eq!(numbers(text.lines()), [1, 3]);
        assert_eq!(dropped.get(), 1);
    }

    /// A value that logs a line of its own while it is being rendered.
    struct LogsWhileRendered(Logger);

    impl slog::Value for LogsWhileRendered {
        fn serialize(
            &self,
            _: &Record,
            key: slog::Key,
            serializer: &mut dyn slog::Serializer,
        ) -> slog::Result {
            info!(self.0, "inner"; "i" => 1);
            serializer.emit_str(key, "rendered")
        }
    }

    #[test]
    fn a_value_that_logs_while_rendered_gets_both_lines_written() {
        let dir = tempfile::tempdir().unwrap();
        let (config, dropped, logger, guard) = open_in(dir.path());
        info!(logger, "outer"; "i" => 2, "value" => LogsWhileRendered(logger.clone()));
        drop(logger);
        drop(guard);
        let text = std::fs::read_to_string(&config.path).unwrap();
        assert_eq!(numbers(text.lines()), [1, 2]);
        assert!(text.contains(r#""value":"rendered""#), "{text}");
        assert_eq!(dropped.get(), 0);
    }

    #[test]
    fn waiting_lines_are_written_without_the_guard() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _, logger, _guard) = open_in(dir.path());
        info!(logger, "first");
        // Far fewer than MAX_CHUNK_BYTES, so only the flusher can hand this line over.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut text = String::new();
        while std::time::Instant::now() < deadline {
            text = std::fs::read_to_string(&config.path).unwrap();
            if !text.is_empty() {
                break;
            }
            std::thread::sleep(FLUSH_INTERVAL / 5);
        }
        assert!(text.contains(r#""msg":"first""#), "{text:?}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn a_line_logged_after_the_guard_is_counted_not_lost_silently() {
        let dir = tempfile::tempdir().unwrap();
        let (config, dropped, logger, guard) = open_in(dir.path());
        info!(logger, "before");
        drop(guard);
        info!(logger, "after");
        let text = std::fs::read_to_string(&config.path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(r#""msg":"before""#));
        assert_eq!(dropped.get(), 1);
    }

    #[test]
    fn line_count_counts_rendered_lines() {
        assert_eq!(line_count(""), 0);
        assert_eq!(line_count("{\"a\":\"x\\ny\"}\n{}\n"), 2);
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
        assert_eq!(numbers(&seen), (0..200).collect::<Vec<_>>());
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
