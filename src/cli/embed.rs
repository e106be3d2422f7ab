//! `edge-bert embed`: one vector per text from an `embed` bundle (task
//! `embed` in its manifest, e.g. one written by `edge-bert-quantize
//! import --task embed`), run in-process.

use std::io::Write;
use std::path::PathBuf;

use edge_bert_model::Error;
use edge_bert_wire::response::{int8_scale, to_int8};

use super::{load_with, Failure, EXIT_INPUT, EXIT_USAGE};

#[derive(clap::Args)]
pub struct Args {
    /// Model bundle directory of an embedding model (task "embed").
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Override the length buckets, e.g. 16,32,64,128 (the last must be the max length).
    #[arg(long, value_delimiter = ',', value_name = "N,N,..")]
    pub buckets: Option<Vec<usize>>,
    /// Decimal places of each value (6 keeps f32's precision near 1e-6).
    #[arg(long, default_value_t = 7, value_name = "N")]
    pub digits: usize,
    /// Write each vector as integers in -127..=127 and a "scale" (value ≈
    /// integer × scale), as the server's `"format": "int8"` does.
    #[arg(long, conflicts_with = "digits")]
    pub int8: bool,
    /// Texts to embed; with none, read one text per line from stdin.
    pub texts: Vec<String>,
}

pub fn run(a: Args) -> Result<(), Failure> {
    let mut clf = load_with(Some(&a.model), a.buckets.as_deref(), true)?;
    let edge_bert_model::manifest::Task::Embed { dim, .. } = clf.task() else {
        return Err(Failure::new(
            EXIT_USAGE,
            format!(
                "{} is not an embedding model (task {}): use `edge-bert classify`",
                a.model.display(),
                clf.task().name()
            ),
        ));
    };
    let digits = a.digits.min(9);
    let mut vector = vec![0.0f32; dim];
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let failed = super::each_text(a.texts, |n, text| match clf.embed_into(text, &mut vector) {
        Ok((tokens, truncated)) => {
            if truncated {
                log::warn!("text {n} truncated to {tokens} tokens");
            }
            let mut line = String::with_capacity(dim * (digits + 4) + text.len() + 64);
            line.push_str("{\"embedding\":[");
            let scale = int8_scale(&vector);
            for (i, v) in vector.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                if a.int8 {
                    line.push_str(&to_int8(*v, scale).to_string());
                } else {
                    line.push_str(&format!("{v:.digits$}"));
                }
            }
            line.push(']');
            if a.int8 {
                line.push_str(&format!(",\"scale\":{scale}"));
            }
            line.push_str(&format!(
                ",\"tokens\":{tokens},\"truncated\":{truncated},\"text\":{}}}",
                serde_json::Value::from(text)
            ));
            writeln!(out, "{line}").map_err(|e| Failure::new(1, format!("stdout: {e}")))?;
            Ok(true)
        }
        Err(e @ Error::EmptyText) => {
            eprintln!("edge-bert: text {n}: {e}");
            Ok(false)
        }
        Err(e) => Err(Failure::new(1, format!("text {n}: {e}"))),
    })?;
    out.flush()
        .map_err(|e| Failure::new(1, format!("stdout: {e}")))?;
    if failed > 0 {
        return Err(Failure::new(
            EXIT_INPUT,
            format!("{failed} text(s) could not be embedded"),
        ));
    }
    Ok(())
}
