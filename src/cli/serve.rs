//! `edge-bert serve`: settings checked, the model loaded and warmed up,
//! start-up memory handed back, then `edge_bert::serve`.

use std::path::PathBuf;
use std::sync::Arc;

use edge_bert::serve as server;
use edge_bert_model::signing::TrustedKeys;
use edge_bert_model::Error;

use super::{load, Failure, EXIT_MODEL, EXIT_USAGE};

#[derive(clap::Args)]
pub struct Args {
    /// Model bundle directory (default: the embedded model).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Unix socket path (default: $XDG_RUNTIME_DIR/edge-bert.sock or /run/edge-bert/edge-bert.sock,
    /// unless only --serial is given).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Also listen on TCP (loopback unless --allow-non-loopback).
    #[arg(long, value_name = "ADDR:PORT")]
    pub tcp: Option<std::net::SocketAddr>,
    /// Allow --tcp on a non-loopback address (logs a warning).
    #[arg(long)]
    pub allow_non_loopback: bool,
    /// Longest request line in bytes (32..=1048576); longer lines get a too_long error.
    #[arg(long, default_value_t = 16384, value_name = "N")]
    pub max_text_bytes: usize,
    /// Most connections served at once (1..=4096); more get too_many_clients.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_clients: usize,
    /// Requests waiting for the worker (1..=65536); beyond that a request gets busy.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub queue: usize,
    /// Close a connection that sends nothing for this long (1..=604800).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub idle_timeout: u64,
    /// Refuse to start if peak memory after warm-up, plus the buffers of
    /// --max-clients sessions, exceeds this.
    #[arg(long, value_name = "MiB")]
    pub memory_budget: Option<u64>,
    /// Also serve this serial port (UART, USB gadget); reopened if it goes away.
    #[arg(long, value_name = "DEV")]
    pub serial: Option<PathBuf>,
    /// Serve only bundles signed by one of the public keys (*.pub) in DIR,
    /// at a version no lower than any run before (needs --model).
    #[arg(long, value_name = "DIR", requires = "model")]
    pub trusted_keys: Option<PathBuf>,
    /// Where the highest model version run is kept (with --trusted-keys).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/edge-bert")]
    pub state_dir: PathBuf,
    /// Baud rate for --serial (8N1, raw).
    #[arg(long, default_value_t = 115_200, value_name = "N", requires = "serial")]
    pub baud: u32,
}

pub fn run(a: Args) -> Result<(), Failure> {
    let cfg = server::Config {
        socket: match (&a.socket, &a.tcp, &a.serial) {
            (None, None, Some(_)) => None,
            _ => Some(a.socket.unwrap_or_else(server::default_socket_path)),
        },
        tcp: a.tcp,
        max_text_bytes: a.max_text_bytes,
        max_clients: a.max_clients,
        queue: a.queue,
        idle_timeout: std::time::Duration::from_secs(a.idle_timeout),
        serial: a.serial,
        baud: a.baud,
        source: None,
        signed: None,
    };
    let keys = match &a.trusted_keys {
        Some(dir) => Some(
            TrustedKeys::load_dir(dir)
                .map_err(|e| Failure::new(EXIT_USAGE, format!("--trusted-keys: {e}")))?,
        ),
        None => None,
    };
    let source = a.model.as_ref().map(|dir| server::ModelSource {
        dir: dir.clone(),
        high_water: keys
            .as_ref()
            .map(|_| a.state_dir.join("version-high-water")),
        keys,
        memory_budget_mib: a.memory_budget,
    });
    serve(source, cfg, a.allow_non_loopback, a.memory_budget)
}

fn serve(
    source: Option<server::ModelSource>,
    mut cfg: server::Config,
    allow_non_loopback: bool,
    memory_budget: Option<u64>,
) -> Result<(), Failure> {
    if let Some(addr) = cfg.tcp {
        if !addr.ip().is_loopback() {
            if !allow_non_loopback {
                return Err(Failure::new(
                    2,
                    format!("--tcp {addr} is not a loopback address; add --allow-non-loopback to bind it"),
                ));
            }
            log::warn!(
                "listening on non-loopback {addr}: anyone who can reach it can use the model"
            );
        }
    }
    // Every limit is checked before anything is loaded (exit 2 with the
    // allowed range), never left to fail at the first client.
    cfg.check()
        .map_err(|e| Failure::new(EXIT_USAGE, e.to_string()))?;
    if cfg.serial.is_some() {
        edge_bert::check_baud(cfg.baud).map_err(|e| Failure::new(EXIT_USAGE, e.to_string()))?;
    }
    if let Some(path) = &cfg.socket {
        server::check_socket_path(path).map_err(|e| Failure::new(EXIT_USAGE, e.to_string()))?;
    }
    server::single_malloc_arena();
    // Sequential plan building: a slower start, but a lower peak for
    // --memory-budget and the board.
    edge_bert_model::engine::set_parallel_build(false);
    let signals = server::Signals::default();
    let handlers = [
        (signal_hook::consts::SIGTERM, &signals.shutdown),
        (signal_hook::consts::SIGINT, &signals.shutdown),
        (signal_hook::consts::SIGHUP, &signals.hangup),
    ];
    for (sig, flag) in handlers {
        signal_hook::flag::register(sig, Arc::clone(flag))
            .map_err(|e| Failure::new(1, format!("installing signal handler: {e}")))?;
    }
    let clf = match &source {
        // Signed: the signature and version are checked before the model
        // is parsed; the bundle's self-test runs after warm-up.
        Some(src) if src.keys.is_some() => {
            let (clf, signed, worst) =
                server::reload::load(src).map_err(|e| Failure::new(EXIT_MODEL, e.to_string()))?;
            if let (Some(path), Some(s)) = (&src.high_water, &signed) {
                server::reload::raise_high_water(path, s.version).map_err(|e| {
                    Failure::new(EXIT_MODEL, format!("recording the version run: {e}"))
                })?;
                log::info!(
                    "signed by key {}, version {}; self-test largest difference {:?}",
                    s.key_id,
                    s.version,
                    worst
                );
            }
            cfg.signed = signed;
            clf
        }
        _ => {
            let mut clf = load(source.as_ref().map(|s| s.dir.as_path()), None)?;
            server::warm_up(&mut clf).map_err(|e| Failure::new(EXIT_MODEL, e.to_string()))?;
            if source.is_some() {
                log::warn!("serving an unsigned bundle (no --trusted-keys)");
            }
            clf
        }
    };
    cfg.source = source;
    let peak = server::peak_rss_kib();
    let sessions = cfg.max_sessions();
    if let (Some(budget), Some(peak)) = (memory_budget, peak) {
        let (peak_mib, buffers_mib) = cfg.memory_need_mib(peak, &clf);
        let total = peak_mib + buffers_mib;
        if total > budget {
            return Err(Failure::new(
                EXIT_MODEL,
                format!(
                    "peak memory after warm-up is {peak_mib} MiB and {sessions} sessions' buffers \
                     take up to {buffers_mib} MiB: {} MiB over --memory-budget {budget}",
                    total - budget
                ),
            ));
        }
    }
    log::info!("warmed up; peak RSS {} KiB", peak.unwrap_or(0));
    // Loading is done for good: give its code pages back (the heap was
    // trimmed when the plans were built).
    let dropped = edge_bert_model::memory::release_startup_pages();
    log::info!(
        "released {} KiB of start-up code pages; RSS now {} KiB",
        dropped / 1024,
        server::rss_kib().unwrap_or(0)
    );
    log::info!(
        "{sessions} sessions' buffers take up to {} KiB when all are open",
        sessions * cfg.session_bytes(&clf) / 1024
    );
    server::serve(clf, cfg, signals).map_err(|e| {
        let code = match e {
            Error::InvalidArgument(_) => EXIT_USAGE,
            _ => 1,
        };
        Failure::new(code, e.to_string())
    })
}
