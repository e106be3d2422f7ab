//! `edge-bert serve`: one inference worker behind a bounded queue, fed by
//! Unix-socket and loopback-TCP clients and a serial line, all speaking the
//! JSON-lines protocol of `edge-bert-wire`. Thin I/O around the pure codec.
//!
//! - this file: settings, listeners, the accept loop, shutdown;
//! - `session`: the one session loop every transport runs;
//! - `worker`: the inference worker and the way a session hands it a text;
//! - `serial`: keeping the serial port open (reopened when it comes back);
//! - `reload`: loading a model to serve (verified, warmed up, self-tested)
//!   at start-up and on reload, and swapping it in.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_bert_model::manifest::Task;
use edge_bert_model::ner::Entity;
use edge_bert_model::{alloc_probe, Classifier, Error, Result};
use edge_bert_wire::{encode_error, frame, label_tokens, ErrorCode, MAX_TEXTS};

pub mod reload;
mod serial;
mod session;
mod worker;

pub use reload::{ModelId, ModelSource};

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
    /// Where the model was loaded from, to load it again on SIGHUP or the
    /// `reload` op; `None` for the embedded model (nothing to reload).
    pub source: Option<ModelSource>,
    /// What was verified about the model given to [`serve`] (its signing
    /// key and version), when it was signed.
    pub signed: Option<edge_bert_model::bundle::Signed>,
}

/// The range each limit of [`Config`] must lie in, checked by
/// [`Config::check`] before anything is loaded.
pub const LIMITS: [(&str, usize, usize); 4] = [
    ("--max-text-bytes", 32, 1 << 20),
    ("--max-clients", 1, 4096),
    ("--queue", 1, 65_536),
    ("--idle-timeout", 1, 604_800),
];

impl Config {
    /// Checks every limit against [`LIMITS`]; the error names the setting
    /// and its allowed range.
    pub fn check(&self) -> Result<()> {
        let values = [
            self.max_text_bytes as u128,
            self.max_clients as u128,
            self.queue as u128,
            self.idle_timeout.as_secs() as u128,
        ];
        for ((name, lo, hi), v) in LIMITS.iter().zip(values) {
            if v < *lo as u128 || v > *hi as u128 {
                return Err(Error::InvalidArgument(format!(
                    "{name} {v} is out of range: allowed {lo}..={hi}"
                )));
            }
        }
        Ok(())
    }

    /// The sessions that may be open at once: `--max-clients`, and the
    /// serial port.
    pub fn max_sessions(&self) -> usize {
        self.max_clients + usize::from(self.serial.is_some())
    }

    /// The bytes one session allocates when it opens (line reader, texts,
    /// the worker slot's text, vector and entity buffers, and the response
    /// buffer) for `clf`; [`Config::max_sessions`] of them may be open.
    pub fn session_bytes(&self, clf: &Classifier) -> usize {
        let line = self.max_text_bytes + frame::SUFFIX_LEN + 2;
        let texts = 2 * (self.max_text_bytes + 8);
        let vector = clf.task().dim() * std::mem::size_of::<f32>();
        let entities = max_entities(clf) * std::mem::size_of::<Entity>();
        line + texts + vector + entities + out_capacity(self.max_text_bytes, clf)
    }

    /// What `--memory-budget` is held to, in MiB: a resident peak (KiB)
    /// and the buffers of [`Config::max_sessions`] sessions for `clf`
    /// (allocated as clients connect, so counted now).
    pub fn memory_need_mib(&self, peak_kib: u64, clf: &Classifier) -> (u64, u64) {
        let buffers = (self.max_sessions() * self.session_bytes(clf)) as u64;
        (peak_kib.div_ceil(1024), buffers.div_ceil(1 << 20))
    }
}

/// The most bytes one value of a vector takes in an answer: an f32 in
/// its shortest form (`-1.2345678e-12`) and a comma.
const VALUE_BYTES: usize = 16;

/// The most entities one text can give: one per token (an NER model's
/// maximum length; 0 for other tasks).
fn max_entities(clf: &Classifier) -> usize {
    match clf.task() {
        Task::Ner => clf.manifest().max_seq_len,
        _ => 0,
    }
}

/// Response buffer capacity that no answer from `clf` exceeds (unless its
/// id is longer than the line limit allows): [`MAX_TEXTS`]
/// classifications over its labels, as many vectors, or the entities of
/// texts that share one request line.
fn out_capacity(max_text_bytes: usize, clf: &Classifier) -> usize {
    let labels = label_tokens(&clf.manifest().labels);
    // Each label in `scores`, and again in a multi-label answer's `labels`.
    let classified = 128 + labels.iter().map(|l| 2 * l.len() + 26).sum::<usize>();
    let embedded = 128 + clf.task().dim() * VALUE_BYTES;
    let per_text = classified.max(embedded);
    let entities = match clf.tag_set() {
        // Every entity's fields (its type, two offsets, a score) and its
        // text, escaped at most 6 bytes a byte. The entities of one line's
        // texts are disjoint spans, so their texts add up to the line at
        // most, and there are no more of them than its bytes or its
        // texts' tokens.
        Some(tags) => {
            let kind = label_tokens(tags.types()).iter().map(String::len).max();
            let each = 80 + kind.unwrap_or(0);
            let count = max_text_bytes.min(MAX_TEXTS * max_entities(clf));
            count * each + 6 * max_text_bytes
        }
        None => 0,
    };
    max_text_bytes + 64 + MAX_TEXTS * per_text + entities
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
pub(crate) struct Metrics {
    pub(crate) requests: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) queued: AtomicUsize,
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

    pub(crate) fn record(&self, d: Duration) {
        let mut g = self.latencies_us.lock().unwrap_or_else(|e| e.into_inner());
        let (ring, next, len) = &mut *g;
        ring[*next] = d.as_micros().min(u32::MAX as u128) as u32;
        *next = (*next + 1) % ring.len();
        *len = (*len + 1).min(ring.len());
    }

    pub(crate) fn percentiles(&self) -> (f64, f64) {
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

pub(crate) struct Shared {
    pub(crate) jobs: Mutex<Option<SyncSender<worker::Job>>>,
    pub(crate) metrics: Metrics,
    /// The model serving now (the worker holds the same one; replaced on
    /// reload).
    pub(crate) served: Mutex<Arc<reload::Served>>,
    pub(crate) source: Option<ModelSource>,
    /// A reload is running (there is one at a time).
    pub(crate) reloading: AtomicBool,
    pub(crate) reload_status: Mutex<reload::Status>,
    pub(crate) shutdown: Arc<AtomicBool>,
    pub(crate) clients: AtomicUsize,
    pub(crate) cfg: Config,
    /// Response buffer capacity that no answer exceeds (unless its id is
    /// longer than the line limit allows), for the model served at start.
    pub(crate) out_capacity: usize,
    /// Values in a vector of the model served at start (0: a classifier):
    /// each session's vector buffer is made this big.
    pub(crate) dim: usize,
    /// The most entities one text gives with the model served at start
    /// (0: not an NER model): each session's entity buffer is made this
    /// big.
    pub(crate) entities: usize,
    /// Set when the inference worker failed (it panicked): `health` says
    /// so, and the server stops and exits non-zero.
    pub(crate) failure: Mutex<Option<String>>,
    /// A fault to inject, for tests (see [`Fault`]).
    pub(crate) fault: Option<Fault>,
}

impl Shared {
    /// Records that the inference worker failed and starts shutting down.
    pub(crate) fn fail(&self, why: String) {
        log::error!("{why}; stopping (exit 1, for the supervisor to restart)");
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        self.shutdown.store(true, Ordering::SeqCst);
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A fault injected for tests through `EDGE_BERT_FAULT`: a panic in the
/// inference worker (`worker-panic:TEXT`) or in a session
/// (`session-panic:TEXT`) when that exact text is classified. It proves
/// the server survives the bugs it cannot foresee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    WorkerPanic(String),
    SessionPanic(String),
}

impl Fault {
    fn from_env() -> Option<Fault> {
        let v = std::env::var("EDGE_BERT_FAULT").ok()?;
        let fault = if let Some(t) = v.strip_prefix("worker-panic:") {
            Fault::WorkerPanic(t.to_string())
        } else if let Some(t) = v.strip_prefix("session-panic:") {
            Fault::SessionPanic(t.to_string())
        } else {
            log::warn!(
                "EDGE_BERT_FAULT={v:?} is not worker-panic:TEXT or session-panic:TEXT; ignored"
            );
            return None;
        };
        log::warn!("EDGE_BERT_FAULT: injecting {fault:?}");
        Some(fault)
    }
}

/// The socket file a server created, known by device and inode, so that
/// it removes that file and never one another server put in its place.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Removes the socket file if it is still the one this server created.
    fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("removing {}: {e}", self.path.display());
                }
            }
            Ok(_) => log::info!(
                "{} is no longer this server's socket (another server took the path); left in place",
                self.path.display()
            ),
            Err(_) => {}
        }
    }
}

/// What is at a socket path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtPath {
    Nothing,
    /// A socket a server is listening on.
    Live,
    /// A socket nobody listens on (ECONNREFUSED): a crashed server's.
    Stale,
}

/// Looks at a socket path without following it (lstat) and without
/// changing anything: anything that is not a socket is an error, and so
/// is a socket that cannot be probed for another reason than
/// ECONNREFUSED (permission denied, say): it is never taken as stale.
fn probe(path: &Path) -> Result<AtPath> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => Err(Error::InvalidArgument(format!(
            "{} exists and is not a socket ({}); refusing to replace it",
            path.display(),
            file_kind(&m.file_type())
        ))),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Ok(AtPath::Live),
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(AtPath::Stale),
            Err(e) => Err(Error::InvalidArgument(format!(
                "cannot tell whether a server is listening on {}: {e}; not replacing it",
                path.display()
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AtPath::Nothing),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Checks, before the model is loaded, that `path` could be served: it is
/// free, a socket, or a stale socket. A live server there is not an error
/// yet (it may be stopping for this one); [`serve`] checks again.
pub fn check_socket_path(path: &Path) -> Result<()> {
    if probe(path)? == AtPath::Live {
        log::info!(
            "a server is listening on {} now; checked again once the model is loaded",
            path.display()
        );
    }
    Ok(())
}

/// Binds a Unix socket at `path` (see [`probe`]): a live server there is
/// an error; a stale socket is replaced; anything else is left alone. The
/// file gets mode 0660.
fn bind_unix(path: &Path) -> Result<(UnixListener, SocketFile)> {
    match probe(path)? {
        AtPath::Nothing => {}
        AtPath::Live => {
            return Err(Error::InvalidArgument(format!(
                "another server is already listening on {}",
                path.display()
            )))
        }
        AtPath::Stale => {
            log::warn!(
                "removing stale socket {} (connection refused)",
                path.display()
            );
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
        }
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    let l = UnixListener::bind(path).map_err(|e| Error::io(path, e))?;
    let m = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: m.dev(),
        ino: m.ino(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::io(path, e))?;
    l.set_nonblocking(true).map_err(|e| Error::io(path, e))?;
    Ok((l, file))
}

/// What kind of file a path is, in words.
fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device node"
    } else {
        "not a socket"
    }
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
    // Twice: a graph whose state keeps an input until the next run gets
    // that input's second buffer here, not on a request.
    for b in clf.engine().buckets() {
        clf.warm_up_bucket(b)?;
        clf.warm_up_bucket(b)?;
    }
    Ok(())
}

/// The signals the server acts on, as flags set by their handlers.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// SIGTERM/SIGINT: stop accepting, answer every accepted line, exit.
    pub shutdown: Arc<AtomicBool>,
    /// SIGHUP: reload the model from its path, in the background.
    pub hangup: Arc<AtomicBool>,
}

/// Runs the server until `signals.shutdown` is set; then stops accepting,
/// removes the socket file it created, answers every line already accepted
/// (a result, or `shutting_down` once the grace is over) and returns. An
/// inference worker that panicked answers `internal`, stops the server
/// the same way, and makes this return an error (exit 1, so that systemd
/// restarts it).
pub fn serve(clf: Classifier, cfg: Config, signals: Signals) -> Result<()> {
    cfg.check()?;
    let shutdown = signals.shutdown.clone();
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
    let served = Arc::new(reload::Served::new(
        &clf,
        ModelId::of(&clf, cfg.signed.as_ref()),
    ));
    let (tx, rx) = mpsc::sync_channel::<worker::Job>(cfg.queue);
    let shared = Arc::new(Shared {
        jobs: Mutex::new(Some(tx)),
        metrics: Metrics::new(),
        out_capacity: out_capacity(cfg.max_text_bytes, &clf),
        dim: clf.task().dim(),
        entities: max_entities(&clf),
        served: Mutex::new(served.clone()),
        source: cfg.source.clone(),
        reloading: AtomicBool::new(false),
        reload_status: Mutex::new(reload::Status::default()),
        shutdown: shutdown.clone(),
        clients: AtomicUsize::new(0),
        cfg: cfg.clone(),
        failure: Mutex::new(None),
        fault: Fault::from_env(),
    });
    log::info!("serving model {}", served.id.tag());

    let worker = worker::spawn(clf, served, rx, shared.clone())?;

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
                    alloc_probe::mark_loop_thread();
                    serial::serve_port(&shared, &path)
                })
                .map_err(|e| Error::io("serial thread", e))?,
        );
    }
    let (unix, socket_file) = match unix {
        Some((l, f)) => (Some(l), Some(f)),
        None => (None, None),
    };
    notify_ready();
    while !shutdown.load(Ordering::SeqCst) {
        if signals.hangup.swap(false, Ordering::SeqCst) {
            hangup(&shared);
        }
        let mut accepted = false;
        if let Some(l) = &unix {
            if let Ok((s, _)) = l.accept() {
                accepted = true;
                handles.extend(spawn_client(&shared, Conn::Unix(s)));
            }
        }
        if let Some(l) = &tcp {
            if let Ok((s, _)) = l.accept() {
                accepted = true;
                handles.extend(spawn_client(&shared, Conn::Tcp(s)));
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
    // The path is free for a new server at once; the file goes only if it
    // is still the one this server made.
    if let Some(f) = &socket_file {
        f.remove();
    }
    for h in handles {
        let _ = h.join();
    }
    shared.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
    let _ = worker.join();
    match shared.failure() {
        Some(why) => Err(Error::Model(why)),
        None => Ok(()),
    }
}

/// SIGHUP: reload the model in the background (the accept loop goes on).
fn hangup(shared: &Arc<Shared>) {
    if shared.source.is_none() {
        log::info!("SIGHUP: the embedded model is served, nothing to reload; ignored");
        return;
    }
    log::info!("SIGHUP: reloading the model");
    let shared = shared.clone();
    let started = std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            let _ = reload::run(&shared);
        });
    if let Err(e) = started {
        log::error!("SIGHUP: cannot start the reload thread ({e}); still serving the old model");
    }
}

enum Conn {
    Unix(UnixStream),
    Tcp(std::net::TcpStream),
}

impl Conn {
    fn try_clone(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }

    /// Blocking, with this write time-out.
    fn set_timeout(&mut self, t: Duration) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => {
                s.set_nonblocking(false)?;
                s.set_write_timeout(Some(t))
            }
            Conn::Tcp(s) => {
                s.set_nonblocking(false)?;
                s.set_write_timeout(Some(t))
            }
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.write_all(bytes),
            Conn::Tcp(s) => s.write_all(bytes),
        }
    }

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

/// Gives back a `--max-clients` slot when dropped, also when the session
/// panicked.
struct ClientSlot<'a>(&'a AtomicUsize);

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts a thread for a new connection. When no thread can be started
/// (the task limit, say), the connection is refused with `busy` and the
/// server goes on.
fn spawn_client(shared: &Arc<Shared>, conn: Conn) -> Option<std::thread::JoinHandle<()>> {
    // A second handle on the connection, to refuse it if the thread
    // cannot start (the closure that owns `conn` is gone then).
    let spare = conn.try_clone().ok();
    let shared2 = shared.clone();
    let started = std::thread::Builder::new()
        .name("client".into())
        .spawn(move || client(&shared2, conn));
    match started {
        Ok(h) => Some(h),
        Err(e) => {
            log::error!("cannot start a thread for a new connection ({e}); refused it");
            shared.metrics.errors.fetch_add(1, Ordering::Relaxed);
            if let Some(mut c) = spare {
                let _ = c.set_timeout(std::time::Duration::from_secs(1));
                let line = encode_error(
                    None,
                    ErrorCode::Busy,
                    "the server cannot take this connection now (no thread); try again later",
                );
                let _ = c.write_all(format!("{line}\n").as_bytes());
            }
            None
        }
    }
}

/// One connection's thread: a `--max-clients` slot, then the session.
fn client(shared: &Shared, conn: Conn) {
    alloc_probe::mark_loop_thread();
    // Only the Unix socket (file permissions: its group) may reload.
    let control = matches!(conn, Conn::Unix(_));
    let Ok((read, mut write)) = conn.split() else {
        return;
    };
    if shared.clients.fetch_add(1, Ordering::SeqCst) >= shared.cfg.max_clients {
        shared.clients.fetch_sub(1, Ordering::SeqCst);
        let _ = writeln!(
            write,
            "{}",
            encode_error(
                None,
                ErrorCode::TooManyClients,
                "server is at --max-clients; try again later"
            )
        );
        return;
    }
    let _slot = ClientSlot(&shared.clients);
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        session::run(shared, read, &mut write, session::Link::Stream { control })
    }));
    match run {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("client: {e}"),
        Err(_) => {
            log::error!("a client session panicked; its connection is closed, the server goes on")
        }
    }
}
