//! The subcommands, one file each; this file holds what they share:
//! exit codes, the [`Failure`] they end with, and loading a model.
//!
//! Exit codes: 0 success; 1 some input could not be classified (empty text,
//! invalid UTF-8) or a run-time error; 2 bad command-line usage; 3 the model
//! bundle could not be loaded; 4 the data file is unreadable or malformed;
//! 5 the server (`--socket`, `--tcp`, `--serial`) could not be reached.

use std::path::Path;
use std::time::Instant;

use edge_bert_model::{Bundle, Classifier, Error};

pub mod bench;
pub mod classify;
pub mod embed;
pub mod eval;
pub mod info;
pub mod reload;
pub mod serve;

/// When main() started (for `bench`'s cold-start figure).
pub static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

pub const EXIT_INPUT: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_MODEL: u8 = 3;
pub const EXIT_DATA: u8 = 4;
pub const EXIT_CONNECT: u8 = 5;

/// Prints a subcommand's report: one struct gives both forms, its JSON
/// (`--json`, one line, keys sorted) and its text (`Display`).
pub fn emit<R: serde::Serialize + std::fmt::Display>(
    report: &R,
    json: bool,
) -> Result<(), Failure> {
    if json {
        let value = serde_json::to_value(report)
            .map_err(|e| Failure::new(EXIT_INPUT, format!("report: {e}")))?;
        print_out(&format!("{value}\n"))
    } else {
        print_out(&report.to_string())
    }
}

/// Writes to stdout; a closed pipe (`| head`) is an error, not a panic.
pub fn print_out(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(EXIT_INPUT, format!("stdout: {e}")))
}

/// A failure with the exit code it maps to.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

pub fn load_bundle(model: Option<&Path>) -> Result<Bundle, Failure> {
    let bundle = match model {
        Some(dir) => Bundle::load_dir(dir),
        None => edge_bert_model::embedded::bundle().unwrap_or_else(|| {
            Err(Error::InvalidArgument(
                "this binary has no embedded model: pass --model DIR".into(),
            ))
        }),
    };
    bundle.map_err(|e| Failure::new(EXIT_MODEL, e.to_string()))
}

pub fn load(model: Option<&Path>, buckets: Option<&[usize]>) -> Result<Classifier, Failure> {
    load_with(model, buckets, false)
}

/// Loads the classifier; `lazy` builds bucket plans on first use.
pub fn load_with(
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
            Error::InvalidArgument(_) => EXIT_USAGE,
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

/// Calls `one(n, text)` for each text (numbered from 1): the arguments, or
/// with none, each line of stdin (a line that is not UTF-8 is reported on
/// stderr and counted as failed). `one` gives `Ok(false)` for a text it
/// refused and reported; returns how many failed.
pub fn each_text(
    texts: Vec<String>,
    mut one: impl FnMut(usize, &str) -> Result<bool, Failure>,
) -> Result<usize, Failure> {
    use std::io::BufRead;
    let mut failed = 0usize;
    if !texts.is_empty() {
        for (i, text) in texts.iter().enumerate() {
            failed += usize::from(!one(i + 1, text)?);
        }
        return Ok(failed);
    }
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
            Ok(text) => failed += usize::from(!one(n, text)?),
            Err(e) => {
                eprintln!(
                    "edge-bert: stdin line {n} is not valid UTF-8 (byte {}): skipped",
                    e.valid_up_to()
                );
                failed += 1;
            }
        }
    }
    Ok(failed)
}
