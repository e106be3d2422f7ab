//! `edge-bert eval`: accuracy (and agreement with a reference bundle) on a
//! labelled file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use edge_bert_model::eval::{
    read_multilabel_tsv, read_ner_jsonl, read_tsv, ClassMetrics, Confusion, EntityCounts,
    LabelCounts, LabelMetrics,
};
use edge_bert_model::manifest::Task;
use edge_bert_model::Classifier;
use serde::Serialize;

use super::{emit, load, Failure, EXIT_DATA};

#[derive(clap::Args)]
pub struct Args {
    /// Model bundle directory (default: the embedded model).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Labelled data: LABEL<TAB>text per line (multi-label models:
    /// LABEL,LABEL,..<TAB>text, or -<TAB>text for none; NER models: JSON
    /// lines {"text": .., "entities": [{"label", "start", "end"}]}, char
    /// offsets).
    #[arg(long, value_name = "FILE.tsv")]
    pub data: PathBuf,
    /// A second bundle to measure agreement with.
    #[arg(long, value_name = "DIR")]
    pub reference: Option<PathBuf>,
    /// Only the first N examples.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<(), Failure> {
    eval(
        a.model.as_deref(),
        &a.data,
        a.reference.as_deref(),
        a.limit,
        a.json,
    )
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
    let multilabel = matches!(clf.task(), Task::Multilabel { .. });
    for c in std::iter::once(&clf).chain(reference.as_ref()) {
        if let Task::Embed { .. } = c.task() {
            return Err(Failure::new(
                super::EXIT_USAGE,
                format!(
                    "{} is an {} bundle; eval measures classifiers (for int8 against fp32 vectors: edge-bert-quantize --eval)",
                    c.source(),
                    c.task().name()
                ),
            ));
        }
    }
    if let Some(r) = &reference {
        if r.task().name() != clf.task().name() {
            return Err(Failure::new(
                super::EXIT_USAGE,
                format!(
                    "{} is a {} bundle and {} a {} one: agreement needs the same task",
                    clf.source(),
                    clf.task().name(),
                    r.source(),
                    r.task().name()
                ),
            ));
        }
    }
    if multilabel {
        return eval_multilabel(clf, data, reference, limit, json);
    }
    if matches!(clf.task(), Task::Ner) {
        return eval_ner(clf, data, reference, limit, json);
    }
    let labels = clf.manifest().labels.clone();
    let mut examples =
        read_tsv(data, &labels).map_err(|e| Failure::new(EXIT_DATA, e.to_string()))?;
    if let Some(n) = limit {
        examples.truncate(n);
    }

    let bar = progress(examples.len());
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
    let report = EvalReport {
        model: clf.manifest().name.clone(),
        source: clf.source().to_string(),
        data: data.display().to_string(),
        examples: n,
        correct: confusion.correct(),
        accuracy: confusion.accuracy(),
        per_class: confusion.per_class(&labels),
        agreement: reference.as_ref().map(|_| agree as f64 / n as f64),
        reference: reference.as_ref().map(|r| r.manifest().name.clone()),
        tokens,
        truncated,
        seconds: secs,
        tokens_per_second: tokens as f64 / secs,
        texts_per_second: n as f64 / secs,
    };
    emit(&report, json)
}

fn progress(n: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} eval [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar
}

/// `eval` of a multi-label bundle: per-label precision, recall and F1,
/// micro and macro F1, exact-set matches, and agreement (same set) with
/// the reference.
fn eval_multilabel(
    mut clf: Classifier,
    data: &Path,
    mut reference: Option<Classifier>,
    limit: Option<usize>,
    json: bool,
) -> Result<(), Failure> {
    let labels = clf.manifest().labels.clone();
    let mut examples =
        read_multilabel_tsv(data, &labels).map_err(|e| Failure::new(EXIT_DATA, e.to_string()))?;
    if let Some(n) = limit {
        examples.truncate(n);
    }
    let bar = progress(examples.len());
    let mut counts = LabelCounts::new(labels.len());
    let (mut agree, mut tokens, mut truncated) = (0u64, 0u64, 0u64);
    let mut busy = std::time::Duration::ZERO;
    for ex in &examples {
        let started = Instant::now();
        let (given, o) = clf
            .given_labels(&ex.text)
            .map_err(|e| Failure::new(1, format!("classifying {:?}: {e}", ex.text)))?;
        busy += started.elapsed();
        tokens += o.tokens as u64;
        truncated += o.truncated as u64;
        counts.add(&ex.labels, &given);
        if let Some(r) = reference.as_mut() {
            let (theirs, _) = r
                .given_labels(&ex.text)
                .map_err(|e| Failure::new(1, format!("reference model: {e}")))?;
            agree += (theirs == given) as u64;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = examples.len() as u64;
    let secs = busy.as_secs_f64().max(1e-9);
    let report = MultilabelReport {
        model: clf.manifest().name.clone(),
        source: clf.source().to_string(),
        data: data.display().to_string(),
        examples: n,
        threshold: match clf.task() {
            Task::Multilabel { threshold } => threshold,
            _ => 0.0,
        },
        micro_f1: counts.micro_f1(),
        macro_f1: counts.macro_f1(),
        exact_match: counts.exact_match(),
        per_label: counts.per_label(&labels),
        agreement: reference.as_ref().map(|_| agree as f64 / n as f64),
        reference: reference.as_ref().map(|r| r.manifest().name.clone()),
        tokens,
        truncated,
        seconds: secs,
        texts_per_second: n as f64 / secs,
    };
    emit(&report, json)
}

/// Entities as `(type, start, end)`, char offsets.
type Spans = Vec<(usize, usize, usize)>;

/// The entities `clf` finds in `text`, the tokens it saw and whether it
/// was truncated.
fn found_entities(
    clf: &mut Classifier,
    text: &str,
) -> Result<(Spans, usize, bool), edge_bert_model::Error> {
    let e = clf.entities(text)?;
    let found = e
        .found
        .iter()
        .map(|x| {
            let (a, b) = edge_bert_model::ner::char_span(text, x.span);
            (x.kind as usize, a, b)
        })
        .collect();
    Ok((found, e.tokens, e.truncated))
}

/// `eval` of an NER bundle: entity-level precision, recall and F1 (type
/// and both ends exact), per type, and agreement (the same entities) with
/// the reference.
fn eval_ner(
    mut clf: Classifier,
    data: &Path,
    mut reference: Option<Classifier>,
    limit: Option<usize>,
    json: bool,
) -> Result<(), Failure> {
    let types = clf
        .tag_set()
        .map(|t| t.types().to_vec())
        .unwrap_or_default();
    if let Some(r) = &reference {
        if r.tag_set().map(|t| t.types()) != Some(&types[..]) {
            return Err(Failure::new(
                super::EXIT_USAGE,
                format!(
                    "{} and {} tag different entity types: agreement needs the same",
                    clf.source(),
                    r.source()
                ),
            ));
        }
    }
    let mut examples =
        read_ner_jsonl(data, &types).map_err(|e| Failure::new(EXIT_DATA, e.to_string()))?;
    if let Some(n) = limit {
        examples.truncate(n);
    }
    let bar = progress(examples.len());
    let mut counts = EntityCounts::new(types.len());
    let (mut agree, mut tokens, mut truncated) = (0u64, 0u64, 0u64);
    let mut busy = std::time::Duration::ZERO;
    for ex in &examples {
        let started = Instant::now();
        let (found, t, cut) = found_entities(&mut clf, &ex.text)
            .map_err(|e| Failure::new(1, format!("tagging {:?}: {e}", ex.text)))?;
        busy += started.elapsed();
        tokens += t as u64;
        truncated += cut as u64;
        counts.add(&ex.entities, &found);
        if let Some(r) = reference.as_mut() {
            let (theirs, _, _) = found_entities(r, &ex.text)
                .map_err(|e| Failure::new(1, format!("reference model: {e}")))?;
            agree += (theirs == found) as u64;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = examples.len() as u64;
    let secs = busy.as_secs_f64().max(1e-9);
    let (precision, recall, f1) = counts.overall();
    let report = NerReport {
        model: clf.manifest().name.clone(),
        source: clf.source().to_string(),
        data: data.display().to_string(),
        examples: n,
        precision,
        recall,
        f1,
        exact_match: counts.exact_match(),
        per_type: counts.per_type(&types),
        agreement: reference.as_ref().map(|_| agree as f64 / n as f64),
        reference: reference.as_ref().map(|r| r.manifest().name.clone()),
        tokens,
        truncated,
        seconds: secs,
        texts_per_second: n as f64 / secs,
    };
    emit(&report, json)
}

/// What `eval` reports for an NER bundle.
#[derive(Serialize)]
struct NerReport {
    model: String,
    source: String,
    data: String,
    examples: u64,
    /// Entity level: a predicted entity is right when a true one has its
    /// type and both ends.
    precision: f64,
    recall: f64,
    f1: f64,
    /// Share of texts given exactly their true entities.
    exact_match: f64,
    per_type: Vec<LabelMetrics>,
    /// Share of texts on which the reference bundle found the same entities.
    agreement: Option<f64>,
    reference: Option<String>,
    tokens: u64,
    truncated: u64,
    seconds: f64,
    texts_per_second: f64,
}

impl std::fmt::Display for NerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "model      {} ({})", self.model, self.source)?;
        writeln!(
            f,
            "data       {} ({} texts, {} truncated)",
            self.data, self.examples, self.truncated
        )?;
        writeln!(
            f,
            "entity F1  {:.2}%  precision {:.2}%  recall {:.2}%  exact texts {:.2}%",
            100.0 * self.f1,
            100.0 * self.precision,
            100.0 * self.recall,
            100.0 * self.exact_match
        )?;
        for m in &self.per_type {
            writeln!(
                f,
                "  {:<12} precision {:.2}%  recall {:.2}%  F1 {:.2}%  support {}",
                m.label,
                100.0 * m.precision,
                100.0 * m.recall,
                100.0 * m.f1,
                m.support
            )?;
        }
        if let (Some(agreement), Some(name)) = (self.agreement, &self.reference) {
            writeln!(
                f,
                "agreement  {:.2}% same entities with {name}",
                100.0 * agreement
            )?;
        }
        writeln!(
            f,
            "speed      {:.1} texts/s ({:.2} s in the model path)",
            self.texts_per_second, self.seconds
        )
    }
}

/// What `eval` reports for a multi-label bundle.
#[derive(Serialize)]
struct MultilabelReport {
    model: String,
    source: String,
    data: String,
    examples: u64,
    threshold: f32,
    micro_f1: f64,
    macro_f1: f64,
    /// Share of texts given exactly their true set of labels.
    exact_match: f64,
    per_label: Vec<LabelMetrics>,
    /// Share of texts on which the reference bundle gave the same set.
    agreement: Option<f64>,
    reference: Option<String>,
    tokens: u64,
    truncated: u64,
    seconds: f64,
    texts_per_second: f64,
}

impl std::fmt::Display for MultilabelReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.examples;
        writeln!(f, "model      {} ({})", self.model, self.source)?;
        writeln!(
            f,
            "data       {} ({n} examples, {} truncated)",
            self.data, self.truncated
        )?;
        writeln!(
            f,
            "micro F1   {:.2}%  macro F1 {:.2}%  exact set {:.2}%  (threshold {})",
            100.0 * self.micro_f1,
            100.0 * self.macro_f1,
            100.0 * self.exact_match,
            self.threshold
        )?;
        for m in &self.per_label {
            writeln!(
                f,
                "  {:<12} precision {:.2}%  recall {:.2}%  F1 {:.2}%  support {}",
                m.label,
                100.0 * m.precision,
                100.0 * m.recall,
                100.0 * m.f1,
                m.support
            )?;
        }
        if let (Some(agreement), Some(name)) = (self.agreement, &self.reference) {
            writeln!(
                f,
                "agreement  {:.2}% same set with {name}",
                100.0 * agreement
            )?;
        }
        writeln!(
            f,
            "speed      {:.1} texts/s ({:.2} s in the model path)",
            self.texts_per_second, self.seconds
        )
    }
}

/// What `eval` reports; its `--json` line and its text both come from it.
#[derive(Serialize)]
struct EvalReport {
    model: String,
    source: String,
    data: String,
    examples: u64,
    correct: u64,
    accuracy: f64,
    per_class: Vec<ClassMetrics>,
    /// Share of texts on which the reference bundle gave the same label.
    agreement: Option<f64>,
    reference: Option<String>,
    tokens: u64,
    truncated: u64,
    seconds: f64,
    tokens_per_second: f64,
    texts_per_second: f64,
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.examples;
        writeln!(f, "model      {} ({})", self.model, self.source)?;
        writeln!(
            f,
            "data       {} ({n} examples, {} truncated)",
            self.data, self.truncated
        )?;
        writeln!(
            f,
            "accuracy   {:.2}% ({}/{n})",
            100.0 * self.accuracy,
            self.correct
        )?;
        for m in &self.per_class {
            writeln!(
                f,
                "  {:<12} precision {:.2}%  recall {:.2}%  support {}",
                m.label,
                100.0 * m.precision,
                100.0 * m.recall,
                m.support
            )?;
        }
        if let (Some(agreement), Some(name)) = (self.agreement, &self.reference) {
            writeln!(f, "agreement  {:.2}% with {name}", 100.0 * agreement)?;
        }
        writeln!(
            f,
            "speed      {:.0} tokens/s, {:.1} texts/s ({:.2} s in the model path{})",
            self.tokens_per_second,
            self.texts_per_second,
            self.seconds,
            if self.reference.is_some() {
                ", reference excluded"
            } else {
                ""
            }
        )
    }
}
