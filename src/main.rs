//! The `edge-bert` command line: it parses the arguments and dispatches to
//! one file per subcommand under `cli/`; each of those is a thin layer over
//! the library crates.
//!
//! Exit codes: 0 success; 1 some input could not be classified (empty text,
//! invalid UTF-8) or a run-time error; 2 bad command-line usage; 3 the model
//! bundle could not be loaded; 4 the data file is unreadable or malformed;
//! 5 the server could not be reached.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

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
        Exit codes: 0 ok, 1 bad input text or run-time error, 2 usage, 3 model bundle error, 4 data file error, 5 server unreachable.\n\
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
        after_help = "Output: LABEL<TAB>score<TAB>text per text, or one JSON object per line with --json;\n\
        a multi-label model gives LABEL,LABEL (or -) in the first column.\n\
        Examples:\n  edge-bert classify \"what a waste of two hours\"\n  \
        edge-bert classify --json --model models/sentiment-fp32 < reviews.txt\n  \
        edge-bert classify --socket /run/edge-bert/edge-bert.sock \"great film\"\n  \
        edge-bert classify --serial /dev/ttyUSB0 --baud 115200 \"great film\"\n  \
        edge-bert classify --model models/moral-int8 --threshold 0.5 \"Every child deserves a fair shot.\""
    )]
    Classify(cli::classify::Args),
    /// Embed texts with an embedding bundle (task "embed"): one JSON line per text.
    #[command(
        after_help = "Output: {\"embedding\":[...],\"tokens\":N,\"truncated\":false,\"text\":\"...\"} per text;\n\
        the vector is pooled as the manifest says (mean over the real tokens, or CLS) and has\n\
        unit L2 norm, so a dot product of two is their cosine.\n\
        Examples:\n  edge-bert-quantize import --onnx paraphrase-MiniLM-L3-v2.onnx \\\n      \
        --tokenizer tokenizer.json --task embed --output models/paraphrase\n  \
        edge-bert embed --model models/paraphrase \"a gorgeous, moving film\"\n  \
        edge-bert embed --model models/paraphrase < texts.txt"
    )]
    Embed(cli::embed::Args),
    /// Serve the model on a local socket (JSON lines; see docs/protocol.md).
    #[command(
        after_help = "Examples:\n  edge-bert serve --socket /tmp/edge-bert.sock\n  \
        edge-bert serve --tcp 127.0.0.1:7878 --max-clients 16\n  \
        edge-bert serve --serial /dev/ttyGS0 --baud 115200\n  \
        echo '{\"id\":1,\"text\":\"great film\"}' | socat - UNIX-CONNECT:/tmp/edge-bert.sock\n  \
        edge-bert serve --model models/paraphrase --socket /tmp/eb.sock   # an embed bundle:\n  \
        echo '{\"id\":2,\"op\":\"embed\",\"text\":\"great film\"}' | socat - UNIX-CONNECT:/tmp/eb.sock\n\n\
        With --serial and neither --socket nor --tcp, only the serial port is served.\n\
        SIGTERM or SIGINT: stop accepting, answer every line that arrived (run for 5 s, then\n\
        shutting_down), remove the socket this server made, exit 0. SIGHUP: reload the model\n\
        from --model DIR (as `edge-bert reload`); with the embedded model it is ignored.\n\
        Exit 1 after an internal failure (the inference worker panicked): restart it."
    )]
    Serve(cli::serve::Args),
    /// Ask a running server to load its model again from its path (Unix socket only).
    #[command(
        after_help = "Example:\n  edge-bert reload --socket /run/edge-bert/edge-bert.sock\n\n\
        The server verifies the bundle (signature and version with --trusted-keys), warms it up,\n\
        runs its self-test and checks --memory-budget, then swaps it in between two requests.\n\
        Exit codes: 0 swapped in, 1 refused (the old model keeps serving), 5 server unreachable.\n\
        SIGHUP to the server does the same in the background."
    )]
    Reload(cli::reload::Args),
    /// Measure accuracy on a labelled file (LABEL<TAB>text per line).
    #[command(
        after_help = "Example:\n  edge-bert eval --model models/sentiment-fp32 \
        --data models/sentiment-fp32/test.tsv --json"
    )]
    Eval(cli::eval::Args),
    /// Measure speed and memory: texts/s (tokenising included), latency, cold start, peak RSS (loading included) and the serving-phase RSS peak.
    #[command(
        after_help = "Texts: --data FILE (LABEL<TAB>text or one text per line), else the committed\n\
        test split compiled into this binary (2,006 movie-review snippets of mixed length).\n\
        Examples:\n  edge-bert bench\n  edge-bert bench --model models/sentiment-fp32 --limit 500 --json\n  \
        edge-bert bench --threads 2"
    )]
    Bench(cli::bench::Args),
    /// Describe a bundle: manifest, shapes, buckets, parameters, files, matmul precision.
    #[command(after_help = "Example:\n  edge-bert info --model models/tiny --json")]
    Info(cli::info::Args),
}

fn main() -> ExitCode {
    cli::START.get_or_init(std::time::Instant::now);
    no_error_backtraces();
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
        Command::Classify(a) => cli::classify::run(a),
        Command::Embed(a) => cli::embed::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::Reload(a) => cli::reload::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Info(a) => cli::info::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("edge-bert: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// tract reports errors through `anyhow`, which captures a backtrace with
/// every error when `RUST_BACKTRACE` is set, and tract makes and drops
/// such errors while it optimises a model (a one-shot classify ran 5× the
/// instructions with `RUST_BACKTRACE=1`). `RUST_LIB_BACKTRACE=0` turns off
/// that capture and leaves panic backtraces to `RUST_BACKTRACE`; a value
/// the user set is kept. Called first thing in `main`, while this is the
/// only thread (the environment is read by no other).
fn no_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}
