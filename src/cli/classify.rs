//! `edge-bert classify`: texts from the arguments or stdin, answered by the
//! model in-process or by a running server (socket, TCP, serial).

use std::io::Write;
use std::path::{Path, PathBuf};

use edge_bert::client::{Client, Reply, SerialClient};
use edge_bert_model::manifest::Task;
use edge_bert_model::{Classification, Classifier, Entities, Error};
use edge_bert_wire::{EntitiesAnswer, NamedEntity};

use super::{load_with, Failure, EXIT_CONNECT, EXIT_INPUT, EXIT_USAGE};

#[derive(clap::Args)]
pub struct Args {
    /// Model bundle directory (default: the model embedded in this binary).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Override the length buckets, e.g. 16,32,64,128 (the last must be the max length).
    #[arg(long, value_delimiter = ',', value_name = "N,N,..")]
    pub buckets: Option<Vec<usize>>,
    /// Ask a running `edge-bert serve` on this Unix socket instead of loading a model.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["model", "buckets", "tcp", "serial"])]
    pub socket: Option<PathBuf>,
    /// Ask a running `edge-bert serve` on this TCP address.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with_all = ["model", "buckets", "serial"])]
    pub tcp: Option<String>,
    /// Ask an `edge-bert serve --serial` over this serial port (frames are CRC-checked).
    #[arg(long, value_name = "DEV", conflicts_with_all = ["model", "buckets"])]
    pub serial: Option<PathBuf>,
    /// Baud rate for --serial.
    #[arg(long, default_value_t = 115_200, value_name = "N", requires = "serial")]
    pub baud: u32,
    /// Multi-label models: give every label whose probability is at least
    /// P (0 < P < 1) instead of the model's own threshold.
    #[arg(long, value_name = "P", value_parser = parse_threshold)]
    pub threshold: Option<f32>,
    /// Texts to classify; with none, read one text per line from stdin.
    pub texts: Vec<String>,
}

/// `--threshold`: a probability strictly between 0 and 1.
fn parse_threshold(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if edge_bert_model::manifest::valid_threshold(t) => Ok(t),
        _ => Err(format!("{s} is not a probability strictly between 0 and 1")),
    }
}

pub fn run(a: Args) -> Result<(), Failure> {
    let backend = open_backend(
        a.model.as_deref(),
        a.buckets.as_deref(),
        a.socket,
        a.tcp,
        a.serial.map(|p| (p, a.baud)),
    )?;
    if let (Backend::Local(c), Some(_)) = (&backend, a.threshold) {
        if !matches!(c.task(), Task::Multilabel { .. }) {
            return Err(Failure::new(
                EXIT_USAGE,
                format!(
                    "--threshold is for multi-label models; {} is a {} model",
                    c.manifest().name,
                    c.task().name()
                ),
            ));
        }
    }
    classify(backend, a.json, a.threshold, a.texts)
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
        if let Err(e) = edge_bert::check_baud(baud) {
            return Err(Failure::new(EXIT_USAGE, e.to_string()));
        }
        return SerialClient::open(&dev, baud, SERIAL_TIMEOUT)
            .map(Backend::Serial)
            .map_err(|e| unreachable_server(&format!("on serial port {}", dev.display()), e));
    }
    let remote = match (socket, tcp) {
        (Some(p), _) => Client::unix(&p)
            .map_err(|e| unreachable_server(&format!("on unix socket {}", p.display()), e)),
        (None, Some(a)) => {
            Client::tcp(&a).map_err(|e| unreachable_server(&format!("at tcp {a}"), e))
        }
        // In-process: build each bucket's plan when a text first needs it,
        // so a one-shot classify answers after one plan, not all of them.
        (None, None) => {
            return load_with(model, buckets, true).map(|c| Backend::Local(Box::new(c)))
        }
    };
    remote.map(Backend::Remote)
}

/// The failure for a server that could not be reached (exit 5): which
/// server, and why.
fn unreachable_server(what: &str, e: Error) -> Failure {
    let why = match e {
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    Failure::new(
        EXIT_CONNECT,
        format!("cannot reach the server {what}: {why}"),
    )
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
    /// One text's answer: labels, or an NER model's entities.
    fn answer(&mut self, text: &str, threshold: Option<f32>) -> Result<Reply, Error> {
        match self {
            Backend::Local(c) if matches!(c.task(), Task::Ner) => {
                let e = c.entities(text)?;
                Ok(Reply::Entities(named(c, text, &e)))
            }
            Backend::Local(c) => c.classify_at(text, threshold).map(Reply::Labels),
            Backend::Remote(c) => c.answer_at(text, threshold),
            Backend::Serial(c) => c.answer_at(text, threshold),
        }
    }
}

/// Entities found in-process, as a server would send them: types by name,
/// char offsets, each entity's own text.
fn named(c: &Classifier, text: &str, e: &Entities) -> EntitiesAnswer {
    let types = c.tag_set().map(|t| t.types()).unwrap_or_default();
    let entities = e
        .found
        .iter()
        .map(|x| {
            let (start, end) = edge_bert_model::ner::char_span(text, x.span);
            NamedEntity {
                label: types.get(usize::from(x.kind)).cloned().unwrap_or_default(),
                start,
                end,
                text: text[x.span.0 as usize..x.span.1 as usize].to_string(),
                score: x.score,
            }
        })
        .collect();
    EntitiesAnswer {
        entities,
        tokens: e.tokens,
        truncated: e.truncated,
    }
}

fn classification_json(c: &Classification, text: &str) -> serde_json::Value {
    let scores: serde_json::Map<String, serde_json::Value> = c
        .scores
        .iter()
        .map(|(l, p)| (l.clone(), serde_json::json!(p)))
        .collect();
    let mut v = serde_json::json!({
        "label": c.label,
        "score": c.score,
        "scores": scores,
        "tokens": c.tokens,
        "truncated": c.truncated,
        "text": text,
    });
    if let Some(labels) = &c.labels {
        v["labels"] = serde_json::json!(labels);
    }
    v
}

/// `text` with tabs and line breaks as spaces, for one-line output.
fn flat(text: &str) -> String {
    text.chars()
        .map(|ch| {
            if matches!(ch, '\t' | '\n' | '\r') {
                ' '
            } else {
                ch
            }
        })
        .collect()
}

/// An NER answer as one line: its entities (`-` for none), each
/// `TYPE start..end "text" score` with char offsets, then the text; or
/// with `json` an object with `entities`.
fn entities_line(e: &EntitiesAnswer, text: &str, json: bool) -> String {
    if json {
        let list: Vec<_> = e
            .entities
            .iter()
            .map(|x| {
                serde_json::json!({"label": x.label, "start": x.start, "end": x.end, "text": x.text, "score": x.score})
            })
            .collect();
        return serde_json::json!({
            "entities": list,
            "tokens": e.tokens,
            "truncated": e.truncated,
            "text": text,
        })
        .to_string();
    }
    let list: Vec<String> = e
        .entities
        .iter()
        .map(|x| {
            format!(
                "{} {}..{} {:?} {:.4}",
                x.label,
                x.start,
                x.end,
                flat(&x.text),
                x.score
            )
        })
        .collect();
    let list = if list.is_empty() {
        "-".to_string()
    } else {
        list.join("; ")
    };
    format!("{list}\t{}", flat(text))
}

fn classify(
    mut clf: Backend,
    json: bool,
    threshold: Option<f32>,
    texts: Vec<String>,
) -> Result<(), Failure> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // Ok(false): this text was refused (reported on stderr), go on with the rest.
    let mut one = |n: usize, text: &str, out: &mut dyn Write| -> Result<bool, Failure> {
        let (line, truncated) = match clf.answer(text, threshold) {
            Ok(Reply::Labels(c)) => {
                let line = if json {
                    classification_json(&c, text).to_string()
                } else {
                    let flat = flat(text);
                    match &c.labels {
                        // Multi-label: the labels given ("-" for none),
                        // then the top label's probability.
                        Some(l) if l.is_empty() => format!("-\t{:.4}\t{flat}", c.score),
                        Some(l) => format!("{}\t{:.4}\t{flat}", l.join(","), c.score),
                        None => format!("{}\t{:.4}\t{}", c.label, c.score, flat),
                    }
                };
                (line, c.truncated.then_some(c.tokens))
            }
            Ok(Reply::Entities(e)) => (
                entities_line(&e, text, json),
                e.truncated.then_some(e.tokens),
            ),
            Err(e @ Error::EmptyText) => {
                eprintln!("edge-bert: text {n}: {e}");
                return Ok(false);
            }
            Err(e) => return Err(Failure::new(1, format!("text {n}: {e}"))),
        };
        if let Some(tokens) = truncated {
            log::warn!("text {n} truncated to {tokens} tokens");
        }
        writeln!(out, "{line}").map_err(|e| Failure::new(1, format!("stdout: {e}")))?;
        Ok(true)
    };
    let failed = super::each_text(texts, |n, text| one(n, text, &mut out))?;
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
