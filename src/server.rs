//! `edge-bert serve`: one inference worker behind a bounded queue, fed by
//! Unix-socket and loopback-TCP clients speaking the JSON-lines protocol of
//! [`crate::protocol`]. Thin I/O around the pure codec.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::framing::{self, Frame};
use crate::protocol::{
    decode, encode_error, label_tokens, unescape, write_classification, write_outcome,
    write_results_start, Line, LineReader, Op, RawValue, Req, MAX_TEXTS,
};
use crate::{Classifier, Outcome};

/// How often blocked loops look at the shutdown flag.
const TICK: Duration = Duration::from_millis(100);
/// How long a client may keep sending already-queued lines after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A client that does not read its responses for this long is dropped, so
/// it cannot stall the server (or its shutdown).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: Option<PathBuf>,
    pub tcp: Option<SocketAddr>,
    pub max_text_bytes: usize,
    pub max_clients: usize,
    pub queue: usize,
    pub idle_timeout: Duration,
    /// A serial port to serve as well (`--serial`), and its baud rate.
    pub serial: Option<PathBuf>,
    pub baud: u32,
}

/// The default Unix socket: `$XDG_RUNTIME_DIR/edge-bert.sock`, else
/// `/run/edge-bert/edge-bert.sock` (the systemd `RuntimeDirectory`).
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("edge-bert.sock"),
        _ => PathBuf::from("/run/edge-bert/edge-bert.sock"),
    }
}

/// Peak resident memory of this process (VmHWM), in KiB, where Linux tells.
pub fn peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

/// This process's resident memory now (VmRSS), in KiB; None where
/// `/proc/self/status` does not tell.
pub fn rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets this process's peak resident memory (VmHWM) to its current
/// resident set, so that a later [`peak_rss_kib`] gives the peak since now.
/// Returns false where Linux does not allow it.
pub fn reset_peak_rss() -> bool {
    // Writing "5" to clear_refs resets the high-water mark (Linux >= 4.0).
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Latency samples in a fixed ring, and counters.
struct Metrics {
    requests: AtomicU64,
    errors: AtomicU64,
    queued: AtomicUsize,
    latencies_us: Mutex<(Box<[u32]>, usize, usize)>,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            latencies_us: Mutex::new((vec![0; 1024].into_boxed_slice(), 0, 0)),
        }
    }

    fn record(&self, d: Duration) {
        let mut g = self.latencies_us.lock().unwrap_or_else(|e| e.into_inner());
        let (ring, next, len) = &mut *g;
        ring[*next] = d.as_micros().min(u32::MAX as u128) as u32;
        *next = (*next + 1) % ring.len();
        *len = (*len + 1).min(ring.len());
    }

    fn percentiles(&self) -> (f64, f64) {
        let g = self.latencies_us.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<u32> = g.0[..g.2].to_vec();
        if v.is_empty() {
            return (0.0, 0.0);
        }
        v.sort_unstable();
        let at = |p: f64| {
            v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)] as f64 / 1000.0
        };
        (at(0.5), at(0.99))
    }
}

/// A text for the worker. The text buffer belongs to the connection: it
/// travels to the worker and comes back with the reply, so no request
/// allocates one.
struct Job {
    text: String,
    reply: SyncSender<Reply>,
}

/// The text buffer, handed back, and the outcome.
type Reply = (String, std::result::Result<Outcome, String>);

struct Shared {
    jobs: Mutex<Option<SyncSender<Job>>>,
    metrics: Metrics,
    info: Value,
    shutdown: Arc<AtomicBool>,
    clients: AtomicUsize,
    cfg: Config,
    /// Labels as JSON string tokens, escaped once.
    labels: Vec<String>,
    /// Response buffer capacity that no classification response exceeds
    /// (unless its id is longer than the line limit allows).
    out_capacity: usize,
}

/// One connection's buffers, allocated when it opens and reused for every
/// request on it.
struct Session {
    /// The text buffer (away at the worker while a text is in flight).
    text: Option<String>,
    /// Decoder scratch (checks escapes and emptiness).
    scratch: String,
    /// The response being built.
    out: Vec<u8>,
    reply_tx: SyncSender<Reply>,
    reply_rx: mpsc::Receiver<Reply>,
}

impl Session {
    fn new(shared: &Shared) -> Session {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        Session {
            text: Some(String::with_capacity(shared.cfg.max_text_bytes + 8)),
            scratch: String::with_capacity(shared.cfg.max_text_bytes + 8),
            out: Vec::with_capacity(shared.out_capacity),
            reply_tx,
            reply_rx,
        }
    }
}

/// Binds a Unix socket at `path`: a live server there is an error; a stale
/// socket file from a crashed server is replaced. The file gets mode 0660.
fn bind_unix(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::InvalidArgument(format!(
                "another server is already listening on {}",
                path.display()
            )));
        }
        log::warn!("removing stale socket {}", path.display());
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    let l = UnixListener::bind(path).map_err(|e| Error::io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::io(path, e))?;
    l.set_nonblocking(true).map_err(|e| Error::io(path, e))?;
    Ok(l)
}

/// Tells systemd (`Type=notify`) that the server is ready, when
/// `$NOTIFY_SOCKET` is set. Called once the model is loaded and warmed up and
/// the listeners are bound.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return log::warn!("sd_notify: {e}"),
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(b"READY=1", &addr))
    } else {
        sock.send_to(b"READY=1", Path::new(&path))
    };
    if let Err(e) = sent {
        log::warn!("sd_notify to {}: {e}", path.to_string_lossy());
    }
}

/// Keeps glibc malloc to one arena. By default every new thread (each
/// client connection) gets its own arena, which made the resident set grow
/// by ~3.8% over the first few thousand requests (bench/serve_rss.py);
/// with one arena it stays within ~0.4%.
pub fn single_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before the
    // server starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Runs one full-length text through every bucket, so every plan and state
/// has done its first (allocating) run before traffic arrives.
pub fn warm_up(clf: &mut Classifier) -> Result<()> {
    for b in clf.engine().buckets() {
        clf.warm_up_bucket(b)?;
    }
    Ok(())
}

/// Runs the server until `shutdown` is set; then stops accepting, answers
/// what was already accepted, removes the socket file and returns.
pub fn serve(mut clf: Classifier, cfg: Config, shutdown: Arc<AtomicBool>) -> Result<()> {
    let unix = cfg.socket.as_deref().map(bind_unix).transpose()?;
    let tcp = match cfg.tcp {
        Some(addr) => {
            let l = TcpListener::bind(addr).map_err(|e| Error::io(addr.to_string(), e))?;
            l.set_nonblocking(true)
                .map_err(|e| Error::io(addr.to_string(), e))?;
            log::info!(
                "listening on tcp {}",
                l.local_addr().map(|a| a.to_string()).unwrap_or_default()
            );
            Some(l)
        }
        None => None,
    };
    let info = json!({
        "model": clf.manifest().name,
        "precision": clf.manifest().precision,
        "labels": clf.manifest().labels,
        "max_seq_len": clf.manifest().max_seq_len,
        "buckets": clf.engine().buckets(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let (tx, rx) = mpsc::sync_channel::<Job>(cfg.queue.max(1));
    let labels = label_tokens(&clf.manifest().labels);
    let per_result = 96 + labels.iter().map(|l| l.len() + 24).sum::<usize>();
    let shared = Arc::new(Shared {
        jobs: Mutex::new(Some(tx)),
        metrics: Metrics::new(),
        info,
        shutdown: shutdown.clone(),
        clients: AtomicUsize::new(0),
        cfg: cfg.clone(),
        out_capacity: cfg.max_text_bytes + 64 + MAX_TEXTS * per_result,
        labels,
    });

    let worker_shared = shared.clone();
    let worker = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            crate::alloc_probe::mark_loop_thread();
            // Ends when every sender is gone: after shutdown and the queue is drained.
            while let Ok(job) = rx.recv() {
                worker_shared.metrics.queued.fetch_sub(1, Ordering::Relaxed);
                let started = Instant::now();
                let r = clf.classify_outcome(&job.text).map_err(|e| e.to_string());
                worker_shared.metrics.record(started.elapsed());
                let _ = job.reply.send((job.text, r));
            }
        })
        .map_err(|e| Error::io("inference thread", e))?;

    if let Some(p) = &cfg.socket {
        log::info!("listening on {}", p.display());
    }
    let mut handles = Vec::new();
    if let Some(path) = cfg.serial.clone() {
        let shared = shared.clone();
        handles.push(
            std::thread::Builder::new()
                .name("serial".into())
                .spawn(move || {
                    crate::alloc_probe::mark_loop_thread();
                    serial_loop(&shared, &path)
                })
                .map_err(|e| Error::io("serial thread", e))?,
        );
    }
    notify_ready();
    while !shutdown.load(Ordering::SeqCst) {
        let mut accepted = false;
        if let Some(l) = &unix {
            if let Ok((s, _)) = l.accept() {
                accepted = true;
                handles.push(spawn_client(&shared, Conn::Unix(s)));
            }
        }
        if let Some(l) = &tcp {
            if let Ok((s, _)) = l.accept() {
                accepted = true;
                handles.push(spawn_client(&shared, Conn::Tcp(s)));
            }
        }
        handles.retain(|h: &std::thread::JoinHandle<()>| !h.is_finished());
        if !accepted {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    log::info!("shutting down: answering accepted requests");
    drop(unix);
    drop(tcp);
    for h in handles {
        let _ = h.join();
    }
    shared.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
    let _ = worker.join();
    if let Some(p) = &cfg.socket {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

enum Conn {
    Unix(UnixStream),
    Tcp(std::net::TcpStream),
}

impl Conn {
    fn split(self) -> std::io::Result<(Box<dyn std::io::Read + Send>, Box<dyn Write + Send>)> {
        match self {
            Conn::Unix(s) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(TICK))?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                Ok((Box::new(s.try_clone()?), Box::new(s)))
            }
            Conn::Tcp(s) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(TICK))?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                s.set_nodelay(true)?;
                Ok((Box::new(s.try_clone()?), Box::new(s)))
            }
        }
    }
}

fn spawn_client(shared: &Arc<Shared>, conn: Conn) -> std::thread::JoinHandle<()> {
    let shared = shared.clone();
    std::thread::spawn(move || {
        crate::alloc_probe::mark_loop_thread();
        let Ok((read, mut write)) = conn.split() else {
            return;
        };
        if shared.clients.fetch_add(1, Ordering::SeqCst) >= shared.cfg.max_clients {
            shared.clients.fetch_sub(1, Ordering::SeqCst);
            let _ = writeln!(
                write,
                "{}",
                encode_error(
                    &Value::Null,
                    "too_many_clients",
                    "server is at --max-clients; try again later"
                )
            );
            return;
        }
        if let Err(e) = client_loop(&shared, read, &mut write) {
            log::debug!("client: {e}");
        }
        shared.clients.fetch_sub(1, Ordering::SeqCst);
    })
}

fn client_loop(
    shared: &Shared,
    read: Box<dyn std::io::Read + Send>,
    write: &mut Box<dyn Write + Send>,
) -> std::io::Result<()> {
    let mut reader = LineReader::new(read, shared.cfg.max_text_bytes);
    let mut session = Session::new(shared);
    let mut idle_since = Instant::now();
    let mut stop_by: Option<Instant> = None;
    loop {
        // After shutdown, lines that have already arrived are still answered
        // (for at most SHUTDOWN_GRACE); the first read that would wait ends it.
        if shared.shutdown.load(Ordering::SeqCst) {
            let deadline = *stop_by.get_or_insert_with(|| Instant::now() + SHUTDOWN_GRACE);
            if Instant::now() >= deadline {
                return Ok(());
            }
        }
        let line = match reader.next_line() {
            Ok(l) => l,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if shared.shutdown.load(Ordering::SeqCst) {
                    return Ok(());
                }
                if idle_since.elapsed() >= shared.cfg.idle_timeout {
                    let _ = writeln!(
                        write,
                        "{}",
                        encode_error(
                            &Value::Null,
                            "idle_timeout",
                            "no request within --idle-timeout; closing"
                        )
                    );
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        idle_since = Instant::now();
        match line {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                session.out.clear();
                session.out.extend_from_slice(too_long(shared).as_bytes());
            }
            Line::Full(bytes) => respond(shared, bytes, &mut session),
        }
        session.out.push(b'\n');
        write.write_all(&session.out)?;
        write.flush()?;
    }
}

fn too_long(shared: &Shared) -> String {
    shared.metrics.errors.fetch_add(1, Ordering::Relaxed);
    encode_error(
        &Value::Null,
        "too_long",
        &format!(
            "line longer than --max-text-bytes {}; discarded",
            shared.cfg.max_text_bytes
        ),
    )
}

/// Writes the response to one request line into `session.out`, whatever
/// the transport. A classification allocates nothing here (see
/// `tests/it/alloc.rs`); ops and errors may.
fn respond(shared: &Shared, bytes: &[u8], session: &mut Session) {
    session.out.clear();
    let req = match decode(bytes, &mut session.scratch) {
        Ok(r) => r,
        Err(r) => {
            shared.metrics.errors.fetch_add(1, Ordering::Relaxed);
            let e = encode_error(&r.id, r.code.as_str(), &r.message);
            session.out.extend_from_slice(e.as_bytes());
            return;
        }
    };
    let failed = |session: &mut Session, id: Option<&RawValue>, code: &str, msg: &str| {
        let id = id
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .unwrap_or(Value::Null);
        session.out.clear();
        session
            .out
            .extend_from_slice(encode_error(&id, code, msg).as_bytes());
    };
    match req {
        Req::Op { id, op } => {
            let id = id
                .and_then(|r| serde_json::from_str(r.get()).ok())
                .unwrap_or(Value::Null);
            session
                .out
                .extend_from_slice(respond_op(shared, &id, op).as_bytes());
        }
        Req::Classify { id, text } => {
            shared.metrics.requests.fetch_add(1, Ordering::Relaxed);
            match classify(shared, text, session) {
                Ok(o) => write_classification(&mut session.out, id, &o, &shared.labels),
                Err((code, msg)) => failed(session, id, code, &msg),
            }
        }
        Req::ClassifyMany { id, texts } => {
            shared.metrics.requests.fetch_add(1, Ordering::Relaxed);
            write_results_start(&mut session.out, id);
            for (i, text) in texts.iter().enumerate() {
                match classify(shared, text, session) {
                    Ok(o) => {
                        if i > 0 {
                            session.out.push(b',');
                        }
                        session.out.push(b'{');
                        write_outcome(&mut session.out, &o, &shared.labels);
                        session.out.push(b'}');
                    }
                    Err((code, msg)) => return failed(session, id, code, &msg),
                }
            }
            session.out.extend_from_slice(b"]}");
        }
    }
}

/// How long to wait before opening a serial port again.
const SERIAL_RETRY: Duration = Duration::from_millis(200);

/// Serves the serial port until shutdown. When the port goes away (cable
/// pulled, USB gadget reset, pty closed) it is reopened once it is back.
fn serial_loop(shared: &Shared, path: &Path) {
    let mut waiting = false;
    while !shared.shutdown.load(Ordering::SeqCst) {
        let port = match crate::serial::Port::open(path, shared.cfg.baud) {
            Ok(p) => p,
            Err(e) => {
                if !waiting {
                    log::warn!("serial: {e}; retrying until it is back");
                    waiting = true;
                }
                std::thread::sleep(SERIAL_RETRY);
                continue;
            }
        };
        waiting = false;
        log::info!(
            "serial: {} open at {} baud",
            path.display(),
            shared.cfg.baud
        );
        match serial_session(shared, port) {
            Ok(()) => break,
            Err(e) => log::warn!("serial: {} lost ({e}); reopening", path.display()),
        }
    }
    log::info!("serial: {} closed", path.display());
}

/// One open period of the serial port. `Ok` means shutdown; `Err` means the
/// port went away.
fn serial_session(shared: &Shared, port: crate::serial::Port) -> std::io::Result<()> {
    let mut write = port.try_clone()?;
    let mut reader = LineReader::new(port, shared.cfg.max_text_bytes + framing::SUFFIX_LEN);
    let mut session = Session::new(shared);
    // Once a checked frame has arrived, every line must be checked: a line
    // without a suffix is then damage, not a person typing.
    let mut checked_link = false;
    let mut stop_by: Option<Instant> = None;
    loop {
        if shared.shutdown.load(Ordering::SeqCst) {
            let deadline = *stop_by.get_or_insert_with(|| Instant::now() + SHUTDOWN_GRACE);
            if Instant::now() >= deadline {
                return Ok(());
            }
        }
        let line = match reader.next_line() {
            Ok(l) => l,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if shared.shutdown.load(Ordering::SeqCst) {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let out = &mut session.out;
        let seal = match line {
            Line::Eof => return Err(std::io::ErrorKind::BrokenPipe.into()),
            Line::TooLong => {
                out.clear();
                out.extend_from_slice(too_long(shared).as_bytes());
                checked_link
            }
            Line::Full(bytes) => match framing::parse(bytes) {
                Frame::Blank => continue,
                Frame::Checked(body) => {
                    checked_link = true;
                    respond(shared, body, &mut session);
                    true
                }
                Frame::Plain(body) if !checked_link => {
                    respond(shared, body, &mut session);
                    false
                }
                Frame::Plain(_) => {
                    out.clear();
                    out.extend_from_slice(
                        corrupt(shared, "no *CRC suffix on a checked link").as_bytes(),
                    );
                    true
                }
                Frame::Corrupt { expected, actual } => {
                    checked_link = true;
                    let msg =
                        format!("CRC mismatch: frame says {expected:08X}, body is {actual:08X}");
                    out.clear();
                    out.extend_from_slice(corrupt(shared, &msg).as_bytes());
                    true
                }
            },
        };
        if seal {
            framing::seal(&mut session.out);
        }
        session.out.push(b'\n');
        write.write_all(&session.out)?;
        write.flush()?;
    }
}

fn corrupt(shared: &Shared, message: &str) -> String {
    shared.metrics.errors.fetch_add(1, Ordering::Relaxed);
    encode_error(&Value::Null, "corrupt", message)
}

/// Runs one text (a JSON string token) through the worker; `Err` is
/// (error code, message).
fn classify(
    shared: &Shared,
    text: &RawValue,
    session: &mut Session,
) -> std::result::Result<Outcome, (&'static str, String)> {
    let sender = shared
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let Some(sender) = sender else {
        return Err(("shutting_down", "the server is stopping".into()));
    };
    let mut buf = session
        .text
        .take()
        .unwrap_or_else(|| String::with_capacity(shared.cfg.max_text_bytes + 8));
    if unescape(text, &mut buf).is_err() {
        session.text = Some(buf);
        return Err(("malformed_json", "text has an invalid escape".into()));
    }
    shared.metrics.queued.fetch_add(1, Ordering::Relaxed);
    let job = Job {
        text: buf,
        reply: session.reply_tx.clone(),
    };
    if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = sender.try_send(job) {
        session.text = Some(job.text);
        shared.metrics.queued.fetch_sub(1, Ordering::Relaxed);
        shared.metrics.errors.fetch_add(1, Ordering::Relaxed);
        return Err(("busy", "the request queue is full; try again".into()));
    }
    loop {
        match session.reply_rx.recv_timeout(TICK) {
            Ok((buf, result)) => {
                session.text = Some(buf);
                return result.map_err(|e| {
                    shared.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    ("model_error", e)
                });
            }
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(("internal", "worker stopped".into()))
            }
        }
    }
}

fn respond_op(shared: &Shared, id: &Value, op: Op) -> String {
    let m = &shared.metrics;
    let body = match op {
        Op::Health => json!({ "id": id, "status": "ok" }),
        Op::Info => json!({ "id": id, "info": shared.info }),
        Op::Metrics => {
            let (p50, p99) = m.percentiles();
            json!({ "id": id, "metrics": {
                "requests": m.requests.load(Ordering::Relaxed),
                "errors": m.errors.load(Ordering::Relaxed),
                "latency_ms_p50": p50,
                "latency_ms_p99": p99,
                "queue_depth": m.queued.load(Ordering::Relaxed),
                "clients": shared.clients.load(Ordering::Relaxed),
                "peak_rss_kib": peak_rss_kib(),
            }})
        }
    };
    body.to_string()
}
