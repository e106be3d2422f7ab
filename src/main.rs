//! The `edge-bert` command line: a thin layer over the library.
//!
//! Exit codes: 0 success; 1 some input could not be classified (empty text,
//! invalid UTF-8) or a run-time error; 2 bad command-line usage; 3 the model
//! bundle could not be loaded; 4 the data file is unreadable or malformed.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use edge_bert::client::{Client, SerialClient};
use edge_bert::eval::{read_tsv, Confusion};
use edge_bert::{server, Bundle, Classification, Classifier, Error};
use serde_json::json;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// When main() started (for `bench`'s cold-start figure).
static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// The committed test split, the default texts for `bench`.
const BENCH_TEXTS: &str = include_str!("../models/sentiment-fp32/test.tsv");

const EXIT_INPUT: u8 = 1;
const EXIT_MODEL: u8 = 3;
const EXIT_DATA: u8 = 4;

#[derive(Parser)]
#[command(
    name = "edge-bert",
    version,
    about = "BERT text classification on small boards, built on tract",
    after_help = "Examples:\n  \
        edge-bert classify \"a gorgeous, moving film\"\n  \
        printf 'dull\\nbrilliant\\n' | edge-bert classify --json\n  \
        edge-bert eval --model models/sentiment-fp32 --data models/sentiment-fp32/test.tsv\n  \
        edge-bert info --model models/tiny\n\n\
        Exit codes: 0 ok, 1 bad input text or run-time error, 2 usage, 3 model bundle error, 4 data file error.\n\
        Logging: RUST_LOG=info (or -v) for more detail on stderr."
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify texts given as arguments, or one per line on stdin.
    #[command(
        after_help = "Output: LABEL<TAB>score<TAB>text per text, or one JSON object per line with --json.\n\
        Examples:\n  edge-bert classify \"what a waste of two hours\"\n  \
        edge-bert classify --json --model models/sentiment-fp32 < reviews.txt\n  \
        edge-bert classify --socket /run/edge-bert/edge-bert.sock \"great film\"\n  \
        edge-bert classify --serial /dev/ttyUSB0 --baud 115200 \"great film\""
    )]
    Classify {
        /// Model bundle directory (default: the model embedded in this binary).
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Override the length buckets, e.g. 16,32,64,128 (the last must be the max length).
        #[arg(long, value_delimiter = ',', value_name = "N,N,..")]
        buckets: Option<Vec<usize>>,
        /// Ask a running `edge-bert serve` on this Unix socket instead of loading a model.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["model", "buckets", "tcp", "serial"])]
        socket: Option<PathBuf>,
        /// Ask a running `edge-bert serve` on this TCP address.
        #[arg(long, value_name = "ADDR:PORT", conflicts_with_all = ["model", "buckets", "serial"])]
        tcp: Option<String>,
        /// Ask an `edge-bert serve --serial` over this serial port (frames are CRC-checked).
        #[arg(long, value_name = "DEV", conflicts_with_all = ["model", "buckets"])]
        serial: Option<PathBuf>,
        /// Baud rate for --serial.
        #[arg(long, default_value_t = 115_200, value_name = "N", requires = "serial")]
        baud: u32,
        /// Texts to classify; with none, read one text per line from stdin.
        texts: Vec<String>,
    },
    /// Serve the model on a local socket (JSON lines; see docs/protocol.md).
    #[command(
        after_help = "Examples:\n  edge-bert serve --socket /tmp/edge-bert.sock\n  \
        edge-bert serve --tcp 127.0.0.1:7878 --max-clients 16\n  \
        edge-bert serve --serial /dev/ttyGS0 --baud 115200\n  \
        echo '{\"id\":1,\"text\":\"great film\"}' | socat - UNIX-CONNECT:/tmp/edge-bert.sock\n\n\
        With --serial and neither --socket nor --tcp, only the serial port is served.\n\
        SIGTERM or SIGINT: stop accepting, answer what was accepted, remove the socket, exit 0."
    )]
    Serve {
        /// Model bundle directory (default: the embedded model).
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        /// Unix socket path (default: $XDG_RUNTIME_DIR/edge-bert.sock or /run/edge-bert/edge-bert.sock,
        /// unless only --serial is given).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Also listen on TCP (loopback unless --allow-non-loopback).
        #[arg(long, value_name = "ADDR:PORT")]
        tcp: Option<std::net::SocketAddr>,
        /// Allow --tcp on a non-loopback address (logs a warning).
        #[arg(long)]
        allow_non_loopback: bool,
        /// Longest request line in bytes; longer lines get a too_long error.
        #[arg(long, default_value_t = 16384, value_name = "N")]
        max_text_bytes: usize,
        /// Most connections served at once; more get too_many_clients.
        #[arg(long, default_value_t = 32, value_name = "N")]
        max_clients: usize,
        /// Requests waiting for the worker; beyond that a request gets busy.
        #[arg(long, default_value_t = 64, value_name = "N")]
        queue: usize,
        /// Close a connection that sends nothing for this long.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        idle_timeout: u64,
        /// Refuse to start if peak memory after warm-up exceeds this.
        #[arg(long, value_name = "MiB")]
        memory_budget: Option<u64>,
        /// Also serve this serial port (UART, USB gadget); reopened if it goes away.
        #[arg(long, value_name = "DEV")]
        serial: Option<PathBuf>,
        /// Baud rate for --serial (8N1, raw).
        #[arg(long, default_value_t = 115_200, value_name = "N", requires = "serial")]
        baud: u32,
    },
    /// Measure accuracy on a labelled file (LABEL<TAB>text per line).
    #[command(
        after_help = "Example:\n  edge-bert eval --model models/sentiment-fp32 \
        --data models/sentiment-fp32/test.tsv --json"
    )]
    Eval {
        /// Model bundle directory (default: the embedded model).
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        /// Labelled data: LABEL<TAB>text per line.
        #[arg(long, value_name = "FILE.tsv")]
        data: PathBuf,
        /// A second bundle to measure agreement with.
        #[arg(long, value_name = "DIR")]
        reference: Option<PathBuf>,
        /// Only the first N examples.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure speed and memory: texts/s (tokenising included), latency, cold start, peak RSS (loading included) and the serving-phase RSS peak.
    #[command(
        after_help = "Texts: --data FILE (LABEL<TAB>text or one text per line), else the committed\n\
        test split compiled into this binary (2,006 movie-review snippets of mixed length).\n\
        Examples:\n  edge-bert bench\n  edge-bert bench --model models/sentiment-fp32 --limit 500 --json\n  \
        edge-bert bench --threads 2"
    )]
    Bench {
        /// Model bundle directory (default: the embedded model).
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        /// Texts to run: LABEL<TAB>text or one text per line.
        #[arg(long, value_name = "FILE")]
        data: Option<PathBuf>,
        /// Only the first N texts.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Also measure N workers, each with its own plans, sharing the texts.
        #[arg(long, default_value_t = 1, value_name = "N")]
        threads: usize,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Describe a bundle: manifest, shapes, buckets, parameters, files, matmul precision.
    #[command(after_help = "Example:\n  edge-bert info --model models/tiny --json")]
    Info {
        /// Model bundle directory (default: the embedded model).
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

fn main() -> ExitCode {
    START.get_or_init(Instant::now);
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    let result = match cli.command {
        Command::Classify {
            model,
            json,
            buckets,
            socket,
            tcp,
            serial,
            baud,
            texts,
        } => open_backend(
            model.as_deref(),
            buckets.as_deref(),
            socket,
            tcp,
            serial.map(|p| (p, baud)),
        )
        .and_then(|b| classify(b, json, texts)),
        Command::Serve {
            model,
            socket,
            tcp,
            allow_non_loopback,
            max_text_bytes,
            max_clients,
            queue,
            idle_timeout,
            memory_budget,
            serial,
            baud,
        } => serve(
            model.as_deref(),
            server::Config {
                socket: match (&socket, &tcp, &serial) {
                    (None, None, Some(_)) => None,
                    _ => Some(socket.unwrap_or_else(server::default_socket_path)),
                },
                tcp,
                max_text_bytes,
                max_clients,
                queue,
                idle_timeout: std::time::Duration::from_secs(idle_timeout),
                serial,
                baud,
            },
            allow_non_loopback,
            memory_budget,
        ),
        Command::Eval {
            model,
            data,
            reference,
            limit,
            json,
        } => eval(model.as_deref(), &data, reference.as_deref(), limit, json),
        Command::Info { model, json } => info(model.as_deref(), json),
        Command::Bench {
            model,
            data,
            limit,
            threads,
            json,
        } => bench(model.as_deref(), data.as_deref(), limit, threads, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("edge-bert: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// A daemon connection when `--socket` or `--tcp` is given, else the model
/// loaded in-process.
fn open_backend(
    model: Option<&Path>,
    buckets: Option<&[usize]>,
    socket: Option<PathBuf>,
    tcp: Option<String>,
    serial: Option<(PathBuf, u32)>,
) -> Result<Backend, Failure> {
    if let Some((dev, baud)) = serial {
        if let Err(e) = edge_bert::serial::check_baud(baud) {
            return Err(Failure::new(2, e.to_string()));
        }
        return SerialClient::open(&dev, baud, SERIAL_TIMEOUT)
            .map(Backend::Serial)
            .map_err(|e| Failure::new(EXIT_MODEL, e.to_string()));
    }
    let remote = match (socket, tcp) {
        (Some(p), _) => Client::unix(&p),
        (None, Some(a)) => Client::tcp(&a),
        // In-process: build each bucket's plan when a text first needs it,
        // so a one-shot classify answers after one plan, not all of them.
        (None, None) => {
            return load_with(model, buckets, true).map(|c| Backend::Local(Box::new(c)))
        }
    };
    remote
        .map(Backend::Remote)
        .map_err(|e| Failure::new(EXIT_MODEL, e.to_string()))
}

/// Where `classify` gets its answers.
enum Backend {
    Local(Box<Classifier>),
    Remote(Client),
    Serial(SerialClient),
}

/// How long `classify --serial` waits for each reply before sending again.
const SERIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Backend {
    fn classify(&mut self, text: &str) -> Result<Classification, Error> {
        match self {
            Backend::Local(c) => c.classify(text),
            Backend::Remote(c) => c.classify(text),
            Backend::Serial(c) => c.classify(text),
        }
    }
}

fn serve(
    model: Option<&Path>,
    cfg: server::Config,
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
    if cfg.serial.is_some() {
        edge_bert::serial::check_baud(cfg.baud).map_err(|e| Failure::new(2, e.to_string()))?;
    }
    server::single_malloc_arena();
    // Sequential plan building: a slower start, but a lower peak for
    // --memory-budget and the board.
    edge_bert::engine::set_parallel_build(false);
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone())
            .map_err(|e| Failure::new(1, format!("installing signal handler: {e}")))?;
    }
    let mut clf = load(model, None)?;
    server::warm_up(&mut clf).map_err(|e| Failure::new(EXIT_MODEL, e.to_string()))?;
    let peak = server::peak_rss_kib();
    if let (Some(budget), Some(peak)) = (memory_budget, peak) {
        let peak_mib = peak.div_ceil(1024);
        if peak_mib > budget {
            return Err(Failure::new(
                EXIT_MODEL,
                format!("peak memory after warm-up is {peak_mib} MiB, {} MiB over --memory-budget {budget}", peak_mib - budget),
            ));
        }
    }
    log::info!("warmed up; peak RSS {} KiB", peak.unwrap_or(0));
    // Loading is done for good: give its code pages back (the heap was
    // trimmed when the plans were built).
    let dropped = edge_bert::memory::release_startup_pages();
    log::info!(
        "released {} KiB of start-up code pages; RSS now {} KiB",
        dropped / 1024,
        server::rss_kib().unwrap_or(0)
    );
    server::serve(clf, cfg, shutdown).map_err(|e| {
        let code = match e {
            Error::InvalidArgument(_) => 2,
            _ => 1,
        };
        Failure::new(code, e.to_string())
    })
}

fn load_bundle(model: Option<&Path>) -> Result<Bundle, Failure> {
    let bundle = match model {
        Some(dir) => Bundle::load_dir(dir),
        None => Bundle::embedded().unwrap_or_else(|| {
            Err(Error::InvalidArgument(
                "this binary has no embedded model: pass --model DIR".into(),
            ))
        }),
    };
    bundle.map_err(|e| Failure::new(EXIT_MODEL, e.to_string()))
}

fn load(model: Option<&Path>, buckets: Option<&[usize]>) -> Result<Classifier, Failure> {
    load_with(model, buckets, false)
}

/// Loads the classifier; `lazy` builds bucket plans on first use.
fn load_with(
    model: Option<&Path>,
    buckets: Option<&[usize]>,
    lazy: bool,
) -> Result<Classifier, Failure> {
    let started = Instant::now();
    let made = match model {
        Some(dir) => Classifier::load_dir(dir, buckets, lazy),
        None => Classifier::from_bundle(load_bundle(None)?, buckets, lazy),
    };
    let clf = made.map_err(|e| {
        let code = match e {
            Error::InvalidArgument(_) => 2,
            _ => EXIT_MODEL,
        };
        Failure::new(code, e.to_string())
    })?;
    log::info!(
        "loaded {} from {} in {:.2?} (buckets {:?}, {} plans built)",
        clf.manifest().name,
        clf.source(),
        started.elapsed(),
        clf.engine().buckets(),
        clf.engine().built_buckets()
    );
    Ok(clf)
}

fn classification_json(c: &Classification, text: &str) -> serde_json::Value {
    let mut m = edge_bert::protocol::classification_fields(c);
    m.insert("text".into(), text.into());
    serde_json::Value::Object(m)
}

fn classify(mut clf: Backend, json: bool, texts: Vec<String>) -> Result<(), Failure> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed = 0usize;
    // Ok(false): this text was refused (reported on stderr), go on with the rest.
    let mut one = |n: usize, text: &str, out: &mut dyn Write| -> Result<bool, Failure> {
        match clf.classify(text) {
            Ok(c) => {
                if c.truncated {
                    log::warn!("text {n} truncated to {} tokens", c.tokens);
                }
                let line = if json {
                    classification_json(&c, text).to_string()
                } else {
                    let flat: String = text
                        .chars()
                        .map(|ch| {
                            if ch == '\t' || ch == '\n' || ch == '\r' {
                                ' '
                            } else {
                                ch
                            }
                        })
                        .collect();
                    format!("{}\t{:.4}\t{}", c.label, c.score, flat)
                };
                writeln!(out, "{line}").map_err(|e| Failure::new(1, format!("stdout: {e}")))?;
            }
            Err(e @ Error::EmptyText) => {
                eprintln!("edge-bert: text {n}: {e}");
                return Ok(false);
            }
            Err(e) => return Err(Failure::new(1, format!("text {n}: {e}"))),
        }
        Ok(true)
    };
    if texts.is_empty() {
        let stdin = std::io::stdin();
        let mut reader = stdin.lock();
        let mut buf = Vec::new();
        let mut n = 0;
        loop {
            buf.clear();
            let read = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| Failure::new(1, format!("reading stdin: {e}")))?;
            if read == 0 {
                break;
            }
            n += 1;
            let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match std::str::from_utf8(line) {
                Ok(text) => failed += usize::from(!one(n, text, &mut out)?),
                Err(e) => {
                    eprintln!(
                        "edge-bert: stdin line {n} is not valid UTF-8 (byte {}): skipped",
                        e.valid_up_to()
                    );
                    failed += 1;
                }
            }
        }
    } else {
        for (i, text) in texts.iter().enumerate() {
            failed += usize::from(!one(i + 1, text, &mut out)?);
        }
    }
    out.flush()
        .map_err(|e| Failure::new(1, format!("stdout: {e}")))?;
    if failed > 0 {
        return Err(Failure::new(
            EXIT_INPUT,
            format!("{failed} text(s) could not be classified"),
        ));
    }
    Ok(())
}

fn eval(
    model: Option<&Path>,
    data: &Path,
    reference: Option<&Path>,
    limit: Option<usize>,
    json: bool,
) -> Result<(), Failure> {
    let mut clf = load(model, None)?;
    let mut reference = reference.map(|r| load(Some(r), None)).transpose()?;
    let labels = clf.manifest().labels.clone();
    let mut examples =
        read_tsv(data, &labels).map_err(|e| Failure::new(EXIT_DATA, e.to_string()))?;
    if let Some(n) = limit {
        examples.truncate(n);
    }

    let bar = indicatif::ProgressBar::new(examples.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} eval [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let mut confusion = Confusion::new(labels.len());
    let mut agree = 0u64;
    let mut tokens = 0u64;
    let mut truncated = 0u64;
    let mut busy = std::time::Duration::ZERO;
    for ex in &examples {
        let started = Instant::now();
        let c = clf
            .classify(&ex.text)
            .map_err(|e| Failure::new(1, format!("classifying {:?}: {e}", ex.text)))?;
        busy += started.elapsed();
        tokens += c.tokens as u64;
        truncated += c.truncated as u64;
        let predicted = labels.iter().position(|l| *l == c.label).unwrap_or(0);
        confusion.add(ex.label, predicted);
        if let Some(r) = reference.as_mut() {
            let rc = r
                .classify(&ex.text)
                .map_err(|e| Failure::new(1, format!("reference model: {e}")))?;
            agree += (rc.label == c.label) as u64;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let n = examples.len() as u64;
    let secs = busy.as_secs_f64().max(1e-9);
    let per_class = confusion.per_class(&labels);
    let report = json!({
        "model": clf.manifest().name,
        "source": clf.source().to_string(),
        "data": data.display().to_string(),
        "examples": n,
        "correct": confusion.correct(),
        "accuracy": confusion.accuracy(),
        "per_class": per_class,
        "agreement": reference.as_ref().map(|_| agree as f64 / n as f64),
        "reference": reference.as_ref().map(|r| r.manifest().name.clone()),
        "tokens": tokens,
        "truncated": truncated,
        "seconds": secs,
        "tokens_per_second": tokens as f64 / secs,
        "texts_per_second": n as f64 / secs,
    });
    if json {
        println!("{report}");
    } else {
        println!("model      {} ({})", clf.manifest().name, clf.source());
        println!(
            "data       {} ({n} examples, {truncated} truncated)",
            data.display()
        );
        println!(
            "accuracy   {:.2}% ({}/{n})",
            100.0 * confusion.accuracy(),
            confusion.correct()
        );
        for m in &per_class {
            println!(
                "  {:<12} precision {:.2}%  recall {:.2}%  support {}",
                m.label,
                100.0 * m.precision,
                100.0 * m.recall,
                m.support
            );
        }
        if let Some(r) = &reference {
            println!(
                "agreement  {:.2}% with {}",
                100.0 * agree as f64 / n as f64,
                r.manifest().name
            );
        }
        println!(
            "speed      {:.0} tokens/s, {:.1} texts/s ({secs:.2} s in the model path{})",
            tokens as f64 / secs,
            n as f64 / secs,
            if reference.is_some() {
                ", reference excluded"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn info(model: Option<&Path>, json: bool) -> Result<(), Failure> {
    let clf = load(model, None)?;
    let m = clf.manifest();
    let stats = clf.engine().stats();
    let shapes: Vec<serde_json::Value> = clf
        .engine()
        .buckets()
        .iter()
        .map(|&b| {
            let inputs: serde_json::Map<String, serde_json::Value> = clf
                .engine()
                .input_names()
                .iter()
                .map(|n| (n.clone(), json!(format!("1x{b}xi64"))))
                .collect();
            json!({ "bucket": b, "inputs": inputs, "output": format!("1x{}xf32", m.labels.len()) })
        })
        .collect();
    let matmuls: Vec<serde_json::Value> = stats
        .matmuls
        .iter()
        .map(|mm| json!({ "node": mm.node, "op": mm.op, "input_types": mm.input_types }))
        .collect();
    if json {
        let report = json!({
            "source": clf.source().to_string(),
            "manifest": m,
            "buckets": clf.engine().buckets(),
            "shapes": shapes,
            "parameters": stats.parameters,
            "vocab_size": clf.tokenizer().vocab_size(),
            "matmuls": matmuls,
            "dynamic_quantize": {
                "ops": stats.dynamic_quantize_ops,
                "kernel": format!("{:?}", edge_bert::dynquant::path()),
            },
            "fused_matmul": {
                "ops": stats.fused_matmuls,
                "path": edge_bert::qmatmul::chosen().map(|p| p.name()),
                "packed_bytes": stats.fused_weight_bytes,
            },
            "weights": {
                "held_bytes": stats.weight_bytes,
                "shared_duplicate_bytes": stats.shared_weight_bytes,
                "table_in_file_bytes": stats.table_in_file_bytes,
            },
        });
        println!("{report}");
        return Ok(());
    }
    println!("name         {}", m.name);
    println!("source       {}", clf.source());
    println!("task         {}", m.task.as_deref().unwrap_or("-"));
    println!("precision    {}", m.precision);
    println!("labels       {}", m.labels.join(", "));
    println!("max length   {} tokens", m.max_seq_len);
    println!("buckets      {:?}", clf.engine().buckets());
    println!(
        "inputs       {} (each 1 x bucket, i64)",
        clf.engine().input_names().join(", ")
    );
    println!("output       {} (1 x {}, f32)", m.output, m.labels.len());
    println!("parameters   {}", stats.parameters);
    println!("vocabulary   {} tokens", clf.tokenizer().vocab_size());
    println!("files");
    for f in &m.files {
        println!(
            "  {:<20} {:>12} bytes  sha256 {}",
            f.path, f.bytes, f.sha256
        );
    }
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for mm in &stats.matmuls {
        let key = format!("{} {}", mm.op, mm.input_types.join(" x "));
        match kinds.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => kinds.push((key, 1)),
        }
    }
    println!("matmuls      {} in all", stats.matmuls.len());
    for (k, n) in &kinds {
        println!("  {n:>3} x {k}");
    }
    if stats.dynamic_quantize_ops > 0 {
        println!(
            "quantize     {} DynamicQuantizeLinear ops on edge-bert's kernel ({:?} path)",
            stats.dynamic_quantize_ops,
            edge_bert::dynquant::path()
        );
    }
    if stats.fused_matmuls > 0 {
        println!(
            "fused int8   {} linear layers on edge-bert's fused matmul ({} path; EDGE_BERT_QMATMUL=off for tract's)",
            stats.fused_matmuls,
            edge_bert::qmatmul::chosen().map_or("?", |p| p.name())
        );
    }
    println!(
        "weights      {:.1} MiB held once by the {} plans ({:.1} MiB of duplicates shared)",
        stats.weight_bytes as f64 / (1 << 20) as f64,
        clf.engine().built_buckets(),
        stats.shared_weight_bytes as f64 / (1 << 20) as f64
    );
    if stats.table_in_file_bytes > 0 {
        println!(
            "embeddings   {:.1} MiB word table left in the model file, read a row per token",
            stats.table_in_file_bytes as f64 / (1 << 20) as f64
        );
    }
    for mm in &stats.matmuls {
        log::info!(
            "matmul {} {} {}",
            mm.node,
            mm.op,
            mm.input_types.join(" x ")
        );
    }
    Ok(())
}

/// Value at quantile `q` of sorted samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

/// Texts per second with `workers` threads, each with its own classifier.
fn bench_workers(bundle: &Bundle, texts: &[String], workers: usize) -> Result<f64, Failure> {
    let classifiers = (0..workers)
        .map(|_| {
            let mut c = Classifier::new(bundle, None)
                .map_err(|e| Failure::new(EXIT_MODEL, e.to_string()))?;
            server::warm_up(&mut c).map_err(|e| Failure::new(EXIT_MODEL, e.to_string()))?;
            Ok(c)
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let failures = std::thread::scope(|s| {
        let handles: Vec<_> = classifiers
            .into_iter()
            .map(|mut c| {
                let next = &next;
                s.spawn(move || {
                    let mut failures = 0usize;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(t) = texts.get(i) else { break };
                        failures += c.classify_outcome(t).is_err() as usize;
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(usize::MAX))
            .sum::<usize>()
    });
    let secs = started.elapsed().as_secs_f64();
    if failures > 0 {
        return Err(Failure::new(1, format!("{failures} texts failed")));
    }
    Ok(texts.len() as f64 / secs)
}

fn bench(
    model: Option<&Path>,
    data: Option<&Path>,
    limit: Option<usize>,
    threads: usize,
    json: bool,
) -> Result<(), Failure> {
    let raw = match data {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| Failure::new(EXIT_DATA, format!("{}: {e}", p.display())))?,
        None => BENCH_TEXTS.to_string(),
    };
    let mut texts: Vec<String> = raw
        .lines()
        .map(|l| l.split_once('\t').map_or(l, |(_, t)| t))
        .filter(|t| !t.trim().is_empty())
        .map(str::to_string)
        .collect();
    if let Some(n) = limit {
        texts.truncate(n);
    }
    if texts.is_empty() {
        return Err(Failure::new(EXIT_DATA, "no texts to run"));
    }
    if threads == 0 {
        return Err(Failure::new(2, "--threads must be at least 1"));
    }
    // Loaded the way `serve` loads: plans built one after the other, the
    // model file's bytes freed once decoded.
    edge_bert::engine::set_parallel_build(false);
    let bundle = load_bundle(model)?;
    let bundle_bytes = bundle.model_bytes.len() + bundle.tokenizer_bytes.len();
    let manifest = bundle.manifest.clone();
    let mut clf = Classifier::from_bundle(bundle, None, false)
        .map_err(|e| Failure::new(EXIT_MODEL, e.to_string()))?;
    // Cold start: from main() to the first answer, with no warm-up.
    clf.classify_outcome(&texts[0])
        .map_err(|e| Failure::new(1, e.to_string()))?;
    let cold = START.get().map_or(0.0, |s| s.elapsed().as_secs_f64());
    server::warm_up(&mut clf).map_err(|e| Failure::new(EXIT_MODEL, e.to_string()))?;
    // From here on is the serving phase: its own high-water mark. Start-up
    // memory is handed back first, as `serve` does.
    let load_peak = server::peak_rss_kib();
    edge_bert::memory::release_startup_pages();
    let serving_hwm = server::reset_peak_rss();

    // One thread: per-text latency, tokenising included.
    let mut lat = Vec::with_capacity(texts.len());
    let mut tokens = 0usize;
    let started = Instant::now();
    for t in &texts {
        let s = Instant::now();
        let o = clf
            .classify_outcome(t)
            .map_err(|e| Failure::new(1, format!("classifying {t:?}: {e}")))?;
        lat.push(s.elapsed().as_secs_f64() * 1000.0);
        tokens += o.tokens;
    }
    let secs = started.elapsed().as_secs_f64();
    let one = texts.len() as f64 / secs;
    lat.sort_by(|a, b| a.total_cmp(b));
    let serving_peak = if serving_hwm {
        server::peak_rss_kib()
    } else {
        None
    };
    let peak_one = load_peak.max(server::peak_rss_kib());
    drop(clf);
    let multi = if threads > 1 {
        let bundle = load_bundle(model)?;
        Some(bench_workers(&bundle, &texts, threads)?)
    } else {
        None
    };
    let peak = server::peak_rss_kib().max(peak_one);
    let m = &manifest;
    let report = json!({
        "model": m.name,
        "precision": m.precision,
        "texts": texts.len(),
        "tokens": tokens,
        "cold_start_ms": cold * 1000.0,
        "texts_per_second": one,
        "tokens_per_second": tokens as f64 / secs,
        "latency_ms_p50": quantile(&lat, 0.5),
        "latency_ms_p99": quantile(&lat, 0.99),
        "threads": threads,
        "texts_per_second_threads": multi,
        "scaling": multi.map(|t| t / one),
        "peak_rss_kib_one_thread": peak_one,
        "load_peak_rss_kib": load_peak,
        "serving_peak_rss_kib": serving_peak,
        "peak_rss_kib": peak,
        "bundle_bytes": bundle_bytes,
        "arch": std::env::consts::ARCH,
    });
    if json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "model       {} ({}), {} texts, {tokens} tokens, {}",
        m.name,
        m.precision,
        texts.len(),
        std::env::consts::ARCH
    );
    println!(
        "cold start  {:.0} ms (process start to first answer)",
        cold * 1000.0
    );
    println!(
        "1 thread    {one:.1} texts/s, {:.0} tokens/s, latency p50 {:.2} ms, p99 {:.2} ms",
        tokens as f64 / secs,
        quantile(&lat, 0.5),
        quantile(&lat, 0.99)
    );
    if let Some(t) = multi {
        println!("{threads} threads   {t:.1} texts/s ({:.2}x)", t / one);
    }
    let ratio = |kib: u64| kib as f64 * 1024.0 / bundle_bytes as f64;
    if let Some(kib) = peak_one {
        println!(
            "peak RSS    {:.1} MiB with one worker, loading included ({:.2}x the {:.1} MiB bundle)",
            kib as f64 / 1024.0,
            ratio(kib),
            bundle_bytes as f64 / (1 << 20) as f64
        );
    }
    if let Some(kib) = serving_peak {
        println!(
            "serving     peak RSS {:.1} MiB after warm-up, over the run ({:.2}x the bundle)",
            kib as f64 / 1024.0,
            ratio(kib)
        );
    }
    Ok(())
}
