//! Logging: `tracing` to standard output, JSON or human-readable, filtered by `log.level` (the
//! `RUST_LOG` environment variable, when set, wins, for one-off debugging). A filter whose
//! default level is `debug` or `trace` keeps [`QUIET`] libraries at `info` unless it names
//! them: `tokio_postgres` logs every SQL statement at DEBUG.
//!
//! Every line goes through one [`Sink`]: appended to an in-memory buffer, which a dedicated
//! writer thread writes to standard output when it is full ([`BUFFER_BYTES`]) or
//! [`FLUSH_INTERVAL`] after its first line (as nginx's `access_log … buffer= flush=`). A request
//! never waits for standard output: when [`MAX_PENDING_BUFFERS`] full buffers wait for the
//! writer, new lines are dropped and counted (`trackproxy_log_lines_dropped_total`). Because
//! the access log and the other lines share the one buffer, they reach standard output in the
//! order they were logged. Dropping the [`LogGuard`] at exit writes out what is buffered.
//!
//! In JSON, the access log's lines are written straight into the sink by the access-log layer
//! (`crate::middleware::access_log`), without going through `tracing`'s field machinery: see
//! `json_sink`.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{FormatFields, Writer};
use tracing_subscriber::fmt::{FormattedFields, MakeWriter};

use crate::config::{LogConfig, LogFormat};

/// Size of one log buffer: the writer is woken when one is full.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// Full buffers that may wait for the writer (16 MiB, some 40 000 access-log lines) before
/// new lines are dropped.
pub const MAX_PENDING_BUFFERS: usize = 256;

/// Longest a line waits in a buffer that is not full.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// How long the exit waits for the writer to write out the buffered lines (standard output
/// may be a pipe nobody reads).
const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Empty buffers kept for reuse, so that steady traffic allocates none.
const SPARE_BUFFERS: usize = 4;

/// The process's sink (set by [`init`]).
static SINK: OnceLock<Arc<Sink>> = OnceLock::new();
/// Set when the JSON format is on: the access log then writes its lines itself.
static JSON: OnceLock<()> = OnceLock::new();

/// Buffered, bounded, never-blocking line output to a writer thread.
#[derive(Debug)]
pub struct Sink {
    state: Mutex<State>,
    /// Wakes the writer: the first line of an empty buffer, a full buffer, closing.
    wake: Condvar,
    /// Tells [`Sink::close`] the writer has finished.
    done: Condvar,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// The buffer lines are appended to.
    current: Vec<u8>,
    /// Full buffers waiting for the writer, oldest first.
    full: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    closing: bool,
    finished: bool,
}

impl Sink {
    /// A sink whose writer thread writes to `out`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(out: impl Write + Send + 'static) -> io::Result<Arc<Sink>> {
        let sink = Arc::new(Sink {
            state: Mutex::new(State {
                current: Vec::with_capacity(BUFFER_BYTES),
                full: VecDeque::with_capacity(MAX_PENDING_BUFFERS),
                spare: Vec::new(),
                closing: false,
                finished: false,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let writer = sink.clone();
        std::thread::Builder::new()
            .name("trackproxy-log".into())
            .spawn(move || writer.run(out))?;
        Ok(sink)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the buffers consistent (appends are whole).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends one complete line (ending in `\n`), or drops and counts it when the writer is
    /// [`MAX_PENDING_BUFFERS`] behind or has stopped. Never waits for the writer.
    pub fn write_line(&self, line: &[u8]) {
        let mut s = self.lock();
        if s.finished {
            drop(s);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut wake = s.current.is_empty() && s.full.is_empty();
        if !s.current.is_empty() && s.current.len() + line.len() > BUFFER_BYTES {
            if s.full.len() >= MAX_PENDING_BUFFERS {
                drop(s);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let next = s
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(BUFFER_BYTES));
            let full = std::mem::replace(&mut s.current, next);
            s.full.push_back(full);
            wake = true;
        }
        s.current.extend_from_slice(line);
        drop(s);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Lines dropped so far (writer behind, or standard output failing).
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Has the writer write out everything buffered and stop; waits up to `timeout` for it.
    /// Returns whether it finished.
    pub fn close(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        s.closing = true;
        self.wake.notify_one();
        while !s.finished {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            s = self
                .done
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// The writer thread: waits for a first line, lets [`FLUSH_INTERVAL`] pass (or less, when a
    /// buffer fills or the sink closes), writes out everything, repeats.
    fn run(&self, mut out: impl Write) {
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(MAX_PENDING_BUFFERS + 1);
        let mut s = self.lock();
        loop {
            while s.current.is_empty() && s.full.is_empty() && !s.closing {
                s = self.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
            if s.full.is_empty() && !s.closing {
                s = self
                    .wake
                    .wait_timeout(s, FLUSH_INTERVAL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            batch.extend(s.full.drain(..));
            if !s.current.is_empty() {
                let next = s
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(BUFFER_BYTES));
                batch.push(std::mem::replace(&mut s.current, next));
            }
            let closing = s.closing;
            drop(s);
            for buf in &batch {
                if out.write_all(buf).is_err() {
                    // Only when standard output fails: no dependency for a faster count.
                    #[allow(clippy::naive_bytecount)]
                    let lines = buf.iter().filter(|&&b| b == b'\n').count();
                    self.dropped
                        .fetch_add(u64::try_from(lines).unwrap_or(0), Ordering::Relaxed);
                }
            }
            let _ = out.flush();
            s = self.lock();
            for mut buf in batch.drain(..) {
                if s.spare.len() < SPARE_BUFFERS && buf.capacity() <= 2 * BUFFER_BYTES {
                    buf.clear();
                    s.spare.push(buf);
                }
            }
            if closing && s.current.is_empty() && s.full.is_empty() {
                s.finished = true;
                self.done.notify_all();
                return;
            }
        }
    }
}

/// Appends `s` as a JSON string (quotes included), escaped as `serde_json` escapes it (`"`,
/// `\\`, and control characters: `\b \t \n \f \r`, else `\u00xx`; everything else as is).
pub(crate) fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    json_escape(s, |part| out.extend_from_slice(part.as_bytes()));
    out.push(b'"');
}

/// The escaped contents of a JSON string, in pieces. Tests 8 bytes at a time (one word, a few
/// bit operations) and hands on clean runs whole: `serde_json`'s byte-at-a-time escaper costs
/// ~15 instructions a byte.
fn json_escape(s: &str, mut push: impl FnMut(&str)) {
    const fn dirty(b: u8) -> bool {
        b < 0x20 || b == b'"' || b == b'\\'
    }
    /// Whether a word has a byte below 0x20, a `"` or a `\` (the classic "has a zero byte"
    /// test, on `w` and on `w` xor each character).
    fn dirty_word(w: u64) -> bool {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        (control | zero(w ^ (ONES * 0x22)) | zero(w ^ (ONES * 0x5c))) != 0
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut clean = 0;
    while clean < bytes.len() {
        // Extend the clean run by whole words, then byte by byte up to a dirty one.
        let rest = &bytes[clean..];
        let mut n = 0;
        for chunk in rest.chunks_exact(8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            if dirty_word(word) {
                break;
            }
            n += 8;
        }
        n += rest[n..].iter().take_while(|&&b| !dirty(b)).count();
        // Split only before an ASCII byte (or at the end): a char boundary.
        if let Some(run) = s.get(clean..clean + n)
            && !run.is_empty()
        {
            push(run);
        }
        clean += n;
        let Some(&b) = bytes.get(clean) else { break };
        let hex;
        push(match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0c => "\\f",
            b'\r' => "\\r",
            _ => {
                hex = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ];
                std::str::from_utf8(&hex).unwrap_or("")
            }
        });
        clean += 1;
    }
}

/// Span fields as a JSON object, written straight out: what `tracing-subscriber`'s
/// `JsonFields` makes (it goes through a map of `serde_json::Value`s, several allocations and
/// ~3 000 instructions for the request span every request has). The JSON event formatter
/// parses this text back into its `span` object, so key order does not matter.
#[derive(Debug, Default)]
struct SpanFields;

thread_local! {
    /// Where [`SpanFields`] puts an object together, so that the span's text is allocated
    /// once at its size instead of grown piece by piece.
    static SPAN_SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl<'w> FormatFields<'w> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut fields = Some(fields);
        let done = SPAN_SCRATCH.try_with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return None;
            };
            scratch.clear();
            let mut v = ObjectVisitor {
                out: &mut *scratch,
                empty: true,
                result: Ok(()),
            };
            fields.take()?.record(&mut v);
            Some(v.finish().and_then(|()| writer.write_str(&scratch)))
        });
        if let Ok(Some(result)) = done {
            return result;
        }
        // The scratch is in use (a field's Debug logging) or gone (thread exit): directly.
        let mut v = ObjectVisitor {
            out: &mut writer,
            empty: true,
            result: Ok(()),
        };
        if let Some(fields) = fields {
            fields.record(&mut v);
        }
        v.finish()
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if current.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        // Fields recorded after the span was made (rare: the `conn` span's `client`): merge.
        let mut new = String::new();
        self.format_fields(Writer::new(&mut new), fields)?;
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&current.fields).map_err(|_| fmt::Error)?;
        let added: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&new).map_err(|_| fmt::Error)?;
        map.extend(added);
        current.fields = serde_json::to_string(&map).map_err(|_| fmt::Error)?;
        Ok(())
    }
}

/// Writes the fields it visits as one JSON object.
struct ObjectVisitor<'a, W: fmt::Write> {
    out: &'a mut W,
    empty: bool,
    result: fmt::Result,
}

impl<W: fmt::Write> ObjectVisitor<'_, W> {
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name.starts_with("log.") {
            return false;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        let out = &mut *self.out;
        let mut r = out.write_str(if self.empty { "{\"" } else { ",\"" });
        json_escape(name, |p| r = r.and_then(|()| out.write_str(p)));
        self.result = self.result.and(r).and(out.write_str("\":"));
        self.empty = false;
        true
    }

    fn string(&mut self, s: &str) {
        let out = &mut *self.out;
        let mut r = out.write_char('"');
        json_escape(s, |p| r = r.and_then(|()| out.write_str(p)));
        self.result = self.result.and(r).and(out.write_char('"'));
    }

    fn value(&mut self, v: impl serde::Serialize) {
        let r = serde_json::to_string(&v).map_err(|_| fmt::Error);
        self.result = self
            .result
            .and(r.and_then(|text| self.out.write_str(&text)));
    }

    fn finish(self) -> fmt::Result {
        self.result?;
        self.out.write_str(if self.empty { "{}" } else { "}" })
    }
}

impl<W: fmt::Write> Visit for ObjectVisitor<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            self.string(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            self.string(&format!("{value:?}"));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            let _ = write!(self.out, "{value}").map_err(|e| self.result = Err(e));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            let _ = write!(self.out, "{value}").map_err(|e| self.result = Err(e));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.result = self
                .result
                .and(self.out.write_str(if value { "true" } else { "false" }));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            self.value(serde_json::Value::from(value));
        }
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        if self.key(field) {
            self.value(value);
        }
    }
}

/// `tracing`'s writer into a [`Sink`]: the formatter writes each event with one `write_all`,
/// so each event is one line, appended whole.
#[derive(Debug, Clone)]
struct SinkWriter(Arc<Sink>);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SinkWriter {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Writes out the buffered log lines when dropped (waiting at most 5 s for standard output).
/// Hold it in `main` until the process exits, after the runtime has stopped.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard {
    sink: Option<Arc<Sink>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink.close(EXIT_FLUSH_TIMEOUT);
        }
    }
}

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing).
pub fn init(cfg: &LogConfig) -> LogGuard {
    if SINK.get().is_some() {
        return LogGuard { sink: None };
    }
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| filter(&s))
        .or_else(|| filter(&cfg.level))
        .unwrap_or_else(|| EnvFilter::new("info"));
    let sink = match Sink::start(io::stdout()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("trackproxy: cannot start the log writer thread: {e}; logging to stderr");
            init_stderr(filter);
            return LogGuard { sink: None };
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal, never into a log file or journal.
        .with_ansi(io::stdout().is_terminal())
        .with_writer(SinkWriter(sink.clone()));
    let installed = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(SpanFields)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    if installed.is_err() || SINK.set(sink.clone()).is_err() {
        sink.close(EXIT_FLUSH_TIMEOUT);
        return LogGuard { sink: None };
    }
    if cfg.format == LogFormat::Json {
        let _ = JSON.set(());
    }
    LogGuard { sink: Some(sink) }
}

/// Libraries whose DEBUG lines come one per query or packet: kept at `info` by a filter whose
/// default level is `debug` or `trace`, unless the filter names them
/// (`"debug,tokio_postgres=debug"`).
pub const QUIET: &[&str] = &["tokio_postgres"];

/// The filter for `spec` (a `tracing` filter such as `log.level`), with [`QUIET`] applied;
/// `None` when `spec` does not parse.
#[must_use]
pub fn filter(spec: &str) -> Option<EnvFilter> {
    let mut filter = EnvFilter::try_new(spec).ok()?;
    // The default level is a directive without a target (`debug`, not `trackproxy=debug`).
    let verbose_default = spec.split(',').map(str::trim).any(|d| {
        ["debug", "trace", "4", "5"]
            .iter()
            .any(|l| d.eq_ignore_ascii_case(l))
    });
    if verbose_default {
        for target in QUIET.iter().filter(|t| !spec.contains(**t)) {
            if let Ok(d) = format!("{target}=info").parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    Some(filter)
}

/// Unbuffered fallback when no writer thread can be started.
fn init_stderr(filter: EnvFilter) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
}

/// The sink, when the JSON log is on: the access log writes its lines into it directly, in
/// the same format as `tracing`'s JSON formatter. `None` (no [`init`], or the human-readable
/// format): the access log goes through `tracing`.
pub(crate) fn json_sink() -> Option<&'static Sink> {
    JSON.get()?;
    SINK.get().map(|s| &**s)
}

/// Log lines dropped so far because the writer could not keep up.
#[must_use]
pub fn dropped_log_lines() -> u64 {
    SINK.get().map_or(0, |s| s.dropped())
}

/// A subscriber for command-line tools: human-readable, warnings and errors, to stderr.
pub fn init_cli() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("warn"))
        .with_writer(io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which of (target, level) events `spec` lets through.
    fn passes(spec: &str, target_events: &[(&str, tracing::Level)]) -> Vec<bool> {
        use tracing_subscriber::layer::SubscriberExt;
        let f = filter(spec).unwrap();
        let sub = tracing_subscriber::registry().with(f);
        tracing::subscriber::with_default(sub, || {
            target_events
                .iter()
                .map(|(target, level)| {
                    let meta = tracing::Metadata::new(
                        "probe",
                        target,
                        *level,
                        None,
                        None,
                        None,
                        tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&PROBE)),
                        tracing::metadata::Kind::EVENT,
                    );
                    tracing::dispatcher::get_default(|d| d.enabled(&meta))
                })
                .collect()
        })
    }

    struct Probe;
    static PROBE: Probe = Probe;
    impl tracing::callsite::Callsite for Probe {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unreachable!("not registered")
        }
    }

    #[test]
    fn a_debug_default_keeps_tokio_postgres_at_info_unless_named() {
        use tracing::Level;
        let probes = [
            ("trackproxy::tls", Level::DEBUG),
            ("tokio_postgres::query", Level::DEBUG),
            ("tokio_postgres::connection", Level::INFO),
        ];
        assert_eq!(passes("debug", &probes), [true, false, true]);
        assert_eq!(
            passes("info,trackproxy=DEBUG", &probes),
            [true, false, true]
        );
        assert_eq!(passes("TRACE", &probes), [true, false, true]);
        assert_eq!(
            passes("debug,tokio_postgres=debug", &probes),
            [true, true, true]
        );
        assert_eq!(passes("info", &probes), [false, false, true]);
        assert_eq!(passes("warn", &probes), [false, false, false]);
        assert!(filter("not a [filter").is_none());
    }

    /// Collects what the writer thread writes; blocks while `gate` is closed.
    #[derive(Clone, Default)]
    struct Out {
        bytes: Arc<Mutex<Vec<u8>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
        writes: Arc<AtomicU64>,
    }

    impl Out {
        fn blocked() -> Self {
            let o = Out::default();
            *o.gate.0.lock().unwrap() = true;
            o
        }
        fn open(&self) {
            *self.gate.0.lock().unwrap() = false;
            self.gate.1.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Out {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.gate;
            let mut closed = lock.lock().unwrap();
            while *closed {
                closed = cv.wait(closed).unwrap();
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// An event in nested spans, JSON-formatted with span fields by `fields`.
    fn span_json<N>(fields: N) -> serde_json::Value
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .fmt_fields(fields)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let conn =
                tracing::info_span!("conn", peer = %"192.0.2.1:5", client = tracing::field::Empty);
            conn.record("client", "198.51.100.7");
            let _c = conn.enter();
            let req = tracing::info_span!(
                "request",
                request_id = "id \"quoted\" \\ \n\u{1} é",
                r#type = 7_i64,
                big = u64::MAX,
                neg = -3_i64,
                ok = true,
                ratio = 0.25_f64,
                nan = f64::NAN,
                dbg = ?("a", 1),
            );
            let _r = req.enter();
            tracing::info!(x = 1, "event");
            let empty = tracing::info_span!("empty");
            let _e = empty.enter();
            tracing::info!("inner");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("timestamp");
                v
            })
            .collect();
        serde_json::Value::Array(lines)
    }

    #[test]
    fn span_fields_are_what_json_fields_make() {
        let ours = span_json(SpanFields);
        let theirs = span_json(tracing_subscriber::fmt::format::JsonFields::new());
        assert_eq!(ours, theirs);
        // Not vacuous: the spans and their fields are there.
        assert_eq!(ours[0]["span"]["request_id"], "id \"quoted\" \\ \n\u{1} é");
        assert_eq!(ours[0]["span"]["type"], 7);
        assert_eq!(ours[0]["spans"][0]["client"], "198.51.100.7");
        assert_eq!(ours[0]["spans"][0]["peer"], "192.0.2.1:5");
        assert_eq!(ours[0]["span"]["nan"], serde_json::Value::Null);
        assert_eq!(ours[0]["span"]["dbg"], "(\"a\", 1)");
        assert_eq!(ours[1]["span"]["name"], "empty");
    }

    #[test]
    fn json_strings_are_escaped_as_serde_json_escapes_them() {
        let mut all = String::new();
        for b in 0u8..0x80 {
            all.push(char::from(b));
        }
        let long = "a clean run of more than sixteen bytes, then \" and é and ✓ 🦀";
        for s in [
            "",
            "plain",
            long,
            &all,
            &long.repeat(5),
            "\u{7f}\u{80}\u{ffff}",
        ] {
            let mut out = Vec::new();
            json_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    #[test]
    fn lines_arrive_in_order_batched_and_all_at_close() {
        let out = Out::default();
        let sink = Sink::start(out.clone()).unwrap();
        let n = 20_000;
        for i in 0..n {
            sink.write_line(format!("line {i}\n").as_bytes());
        }
        assert!(sink.close(Duration::from_secs(10)));
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), n);
        assert!(
            lines
                .iter()
                .enumerate()
                .all(|(i, l)| *l == format!("line {i}"))
        );
        // ~230 kB in 64 kB buffers: a handful of writes, not one per line.
        let writes = out.writes.load(Ordering::Relaxed);
        assert!(writes < 50, "{writes} writes");
        assert_eq!(sink.dropped(), 0);
    }

    #[test]
    fn a_line_is_written_within_the_flush_interval() {
        let out = Out::default();
        let sink = Sink::start(out.clone()).unwrap();
        let t0 = Instant::now();
        sink.write_line(b"one\n");
        while out.text().is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(5), "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            t0.elapsed() >= FLUSH_INTERVAL.mul_f32(0.9),
            "{:?}",
            t0.elapsed()
        );
        assert!(sink.close(Duration::from_secs(5)));
    }

    #[test]
    fn a_stuck_writer_drops_and_counts_instead_of_blocking() {
        let out = Out::blocked();
        let sink = Sink::start(out.clone()).unwrap();
        let line = [b'x'; 1023];
        let mut line = line.to_vec();
        line.push(b'\n');
        // Far more than the buffers hold: 64 lines per buffer.
        let n = (MAX_PENDING_BUFFERS + 8) * 64 * 2;
        let t0 = Instant::now();
        for _ in 0..n {
            sink.write_line(&line);
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "writing blocked");
        let dropped = sink.dropped();
        assert!(dropped > 0);
        out.open();
        assert!(sink.close(Duration::from_secs(10)));
        let written = out.text().lines().count() as u64;
        assert_eq!(written + dropped, n as u64, "every line written or counted");
        // Held: the pending buffers, the current one, and the one the writer was writing.
        assert!(written >= (MAX_PENDING_BUFFERS as u64) * 63, "{written}");
    }

    #[test]
    fn close_gives_up_on_a_writer_that_never_returns() {
        let out = Out::blocked();
        let sink = Sink::start(out).unwrap();
        sink.write_line(b"stuck\n");
        let t0 = Instant::now();
        assert!(!sink.close(Duration::from_millis(300)));
        assert!(t0.elapsed() < Duration::from_secs(3));
    }
}
