//! `edge-bert serve`: one inference worker behind a bounded queue, fed by
//! Unix-socket and loopback-TCP clients and a serial line, all speaking the
//! JSON-lines protocol of `edge-bert-wire`. Thin I/O around the pure codec.
//!
//! - this file: settings, listeners, the accept loop, shutdown;
//! - `session`: the one session loop every transport runs;
//! - `worker`: the inference worker and the way a session hands it a text;
//! - `serial`: keeping the serial port open (reopened when it comes back).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_bert_model::{alloc_probe, Classifier, Error, Result};
use edge_bert_wire::{encode_error, label_tokens, ErrorCode, MAX_TEXTS};
use serde_json::{json, Value};

mod serial;
mod session;
mod worker;

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
    pub(crate) info: Value,
    pub(crate) shutdown: Arc<AtomicBool>,
    pub(crate) clients: AtomicUsize,
    pub(crate) cfg: Config,
    /// Labels as JSON string tokens, escaped once.
    pub(crate) labels: Vec<String>,
    /// Response buffer capacity that no classification response exceeds
    /// (unless its id is longer than the line limit allows).
    pub(crate) out_capacity: usize,
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
pub fn serve(clf: Classifier, cfg: Config, shutdown: Arc<AtomicBool>) -> Result<()> {
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
    let (tx, rx) = mpsc::sync_channel::<worker::Job>(cfg.queue.max(1));
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

    let worker = worker::spawn(clf, rx, shared.clone())?;

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
        alloc_probe::mark_loop_thread();
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
                    ErrorCode::TooManyClients,
                    "server is at --max-clients; try again later"
                )
            );
            return;
        }
        let link = session::Link::Stream;
        if let Err(e) = session::run(&shared, read, &mut write, link) {
            log::debug!("client: {e}");
        }
        shared.clients.fetch_sub(1, Ordering::SeqCst);
    })
}
