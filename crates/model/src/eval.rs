//! Labelled data files and accuracy metrics (pure, but for [`read_tsv`];
//! no model).
//!
//! A data file is UTF-8 text, one example per line: `LABEL<TAB>text`, with
//! the label spelled as in the bundle's manifest. For a multi-label model
//! the line is `LABEL,LABEL,..<TAB>text` (`-` for none), read by
//! [`read_multilabel_tsv`] and scored by [`LabelCounts`]: per-label
//! precision, recall and F1, micro and macro F1, exact-set matches. For an
//! NER model the file is JSON lines, `{"text": .., "entities": [{"label":
//! "LOC", "start": 5, "end": 11}, ..]}` with char offsets, read by
//! [`read_ner_jsonl`] and scored by [`EntityCounts`]: an entity counts when
//! its type and both ends match exactly (entity-level F1, as seqeval).

use std::path::Path;

use serde::Serialize;

use crate::error::Error;

/// Reads and parses a data file; errors name the file and, where there is
/// one, the line.
pub fn read_tsv(path: &Path, labels: &[String]) -> Result<Vec<Example>, Error> {
    read_with(path, |text| parse_tsv(text, labels))
}

/// Reads and parses a multi-label data file (see [`parse_multilabel_line`]).
pub fn read_multilabel_tsv(path: &Path, labels: &[String]) -> Result<Vec<LabelSet>, Error> {
    read_with(path, |text| {
        parse_lines(text, |l| parse_multilabel_line(l, labels))
    })
}

fn read_with<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<Vec<T>, (usize, String)>,
) -> Result<Vec<T>, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        Error::Data {
            path: path.to_path_buf(),
            line: 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count(),
            reason: format!("not valid UTF-8 (byte {at})"),
        }
    })?;
    parse(&text).map_err(|(line, reason)| {
        if line == 0 {
            Error::EmptyData {
                path: path.to_path_buf(),
            }
        } else {
            Error::Data {
                path: path.to_path_buf(),
                line,
                reason,
            }
        }
    })
}

/// Reads and parses an NER data file (see [`parse_ner_line`]).
pub fn read_ner_jsonl(path: &Path, types: &[String]) -> Result<Vec<NerExample>, Error> {
    read_with(path, |text| parse_lines(text, |l| parse_ner_line(l, types)))
}

/// One text of an NER data file and its entities: `(type, start, end)`,
/// the type an index into the model's entity types, the ends char offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NerExample {
    pub text: String,
    pub entities: Vec<(usize, usize, usize)>,
}

/// Parses one line of an NER data file.
pub fn parse_ner_line(line: &str, types: &[String]) -> Result<NerExample, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        text: String,
        entities: Vec<Ent>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ent {
        label: String,
        start: usize,
        end: usize,
    }
    let l: Line = serde_json::from_str(line)
        .map_err(|e| format!("not an NER line ({{\"text\": .., \"entities\": [..]}}): {e}"))?;
    if l.text.trim().is_empty() {
        return Err("empty text".into());
    }
    let chars = l.text.chars().count();
    let mut entities = Vec::with_capacity(l.entities.len());
    for e in l.entities {
        let t = types.iter().position(|t| *t == e.label).ok_or_else(|| {
            format!(
                "entity type {:?} is not one of the model's ({})",
                e.label,
                types.join(", ")
            )
        })?;
        if e.start >= e.end || e.end > chars {
            return Err(format!(
                "entity {} {}..{} is not a span of the text's {chars} chars",
                e.label, e.start, e.end
            ));
        }
        entities.push((t, e.start, e.end));
    }
    Ok(NerExample {
        text: l.text,
        entities,
    })
}

/// Entity-level counts per type: an entity is a true positive when one of
/// the same type and span is on the other side.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntityCounts(Tally);

impl EntityCounts {
    pub fn new(n_types: usize) -> EntityCounts {
        EntityCounts(Tally::new(n_types))
    }

    /// Adds one text's true and predicted `(type, start, end)` entities.
    pub fn add(&mut self, truth: &[(usize, usize, usize)], predicted: &[(usize, usize, usize)]) {
        let t = &mut self.0;
        for p in predicted {
            if truth.contains(p) {
                t.tp[p.0] += 1;
            } else {
                t.fp[p.0] += 1;
            }
        }
        for e in truth {
            if !predicted.contains(e) {
                t.fn_[e.0] += 1;
            }
        }
        t.text(truth, predicted);
    }

    /// Share of texts whose entities are all and only the true ones.
    pub fn exact_match(&self) -> f64 {
        self.0.exact_match()
    }

    /// Precision, recall and F1 of each type; `support` is its true
    /// entities.
    pub fn per_type(&self, types: &[String]) -> Vec<LabelMetrics> {
        self.0.per_label(types)
    }

    /// Entity-level precision, recall and F1 over all types.
    pub fn overall(&self) -> (f64, f64, f64) {
        let (tp, fp, fn_) = self.0.pooled();
        (ratio(tp, tp + fp), ratio(tp, tp + fn_), f1(tp, fp, fn_))
    }
}

/// One labelled example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub label: usize,
    pub text: String,
}

/// Parses one data line. `Err` is a reason, without the line number.
pub fn parse_line(line: &str, labels: &[String]) -> Result<Example, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (label, text) = line
        .split_once('\t')
        .ok_or_else(|| "expected LABEL<TAB>text".to_string())?;
    let label = labels
        .iter()
        .position(|l| l == label)
        .ok_or_else(|| format!("unknown label {label:?} (expected one of {labels:?})"))?;
    if text.trim().is_empty() {
        return Err("empty text".into());
    }
    Ok(Example {
        label,
        text: text.to_string(),
    })
}

/// Parses a whole data file; blank lines are skipped. `Err` is
/// `(line number, reason)` for the first bad line.
pub fn parse_tsv(text: &str, labels: &[String]) -> Result<Vec<Example>, (usize, String)> {
    parse_lines(text, |l| parse_line(l, labels))
}

fn parse_lines<T>(
    text: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse(line).map_err(|r| (i + 1, r))?);
    }
    if out.is_empty() {
        return Err((0, "no examples".into()));
    }
    Ok(out)
}

/// One example of a multi-label data file: the indices of its labels
/// (manifest order, each once) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSet {
    pub labels: Vec<usize>,
    pub text: String,
}

/// Parses one multi-label data line, `LABEL,LABEL,..<TAB>text` or
/// `-<TAB>text` (no label). `Err` is a reason, without the line number.
pub fn parse_multilabel_line(line: &str, labels: &[String]) -> Result<LabelSet, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (given, text) = line
        .split_once('\t')
        .ok_or_else(|| "expected LABEL,LABEL,..<TAB>text (or -<TAB>text)".to_string())?;
    let mut set = Vec::new();
    if given != "-" {
        for name in given.split(',') {
            let i = labels.iter().position(|l| l == name).ok_or_else(|| {
                format!("unknown label {name:?} (expected some of {labels:?}, or -)")
            })?;
            if set.contains(&i) {
                return Err(format!("label {name:?} given twice"));
            }
            set.push(i);
        }
    }
    if text.trim().is_empty() {
        return Err("empty text".into());
    }
    set.sort_unstable();
    Ok(LabelSet {
        labels: set,
        text: text.to_string(),
    })
}

/// True positives, false positives and false negatives per label, and
/// texts whose whole set was right: what [`LabelCounts`] and
/// [`EntityCounts`] count.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Tally {
    tp: Vec<u64>,
    fp: Vec<u64>,
    fn_: Vec<u64>,
    exact: u64,
    texts: u64,
}

impl Tally {
    fn new(n: usize) -> Tally {
        Tally {
            tp: vec![0; n],
            fp: vec![0; n],
            fn_: vec![0; n],
            exact: 0,
            texts: 0,
        }
    }

    /// Counts one text, exact when both sides hold the same items.
    fn text<T: PartialEq>(&mut self, truth: &[T], predicted: &[T]) {
        let same = truth.len() == predicted.len() && truth.iter().all(|t| predicted.contains(t));
        self.exact += same as u64;
        self.texts += 1;
    }

    fn exact_match(&self) -> f64 {
        ratio(self.exact, self.texts)
    }

    fn per_label(&self, labels: &[String]) -> Vec<LabelMetrics> {
        (0..self.tp.len())
            .map(|l| {
                let (tp, fp, fn_) = (self.tp[l], self.fp[l], self.fn_[l]);
                LabelMetrics {
                    label: labels.get(l).cloned().unwrap_or_else(|| l.to_string()),
                    support: tp + fn_,
                    precision: ratio(tp, tp + fp),
                    recall: ratio(tp, tp + fn_),
                    f1: f1(tp, fp, fn_),
                }
            })
            .collect()
    }

    /// The counts of all labels pooled: `(tp, fp, fn)`.
    fn pooled(&self) -> (u64, u64, u64) {
        let sum = |v: &[u64]| v.iter().sum::<u64>();
        (sum(&self.tp), sum(&self.fp), sum(&self.fn_))
    }
}

/// Counts for multi-label scoring: true positives, false positives and
/// false negatives of each label, and texts whose whole set was right.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelCounts(Tally);

/// Precision, recall and F1 of one label of a multi-label model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelMetrics {
    pub label: String,
    /// Texts that have this label.
    pub support: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// F1 from counts; 0 where undefined.
fn f1(tp: u64, fp: u64, fn_: u64) -> f64 {
    ratio(2 * tp, 2 * tp + fp + fn_)
}

impl LabelCounts {
    pub fn new(n_labels: usize) -> LabelCounts {
        LabelCounts(Tally::new(n_labels))
    }

    /// Adds one text: its true and its predicted label indices (each
    /// index once; any order).
    pub fn add(&mut self, truth: &[usize], predicted: &[usize]) {
        let t = &mut self.0;
        for l in 0..t.tp.len() {
            match (truth.contains(&l), predicted.contains(&l)) {
                (true, true) => t.tp[l] += 1,
                (false, true) => t.fp[l] += 1,
                (true, false) => t.fn_[l] += 1,
                (false, false) => {}
            }
        }
        t.text(truth, predicted);
    }

    pub fn texts(&self) -> u64 {
        self.0.texts
    }

    /// Share of texts whose predicted set is exactly the true one.
    pub fn exact_match(&self) -> f64 {
        self.0.exact_match()
    }

    /// Texts whose predicted set is exactly the true one.
    pub fn exact(&self) -> u64 {
        self.0.exact
    }

    pub fn per_label(&self, labels: &[String]) -> Vec<LabelMetrics> {
        self.0.per_label(labels)
    }

    /// F1 over all labels' counts pooled.
    pub fn micro_f1(&self) -> f64 {
        let (tp, fp, fn_) = self.0.pooled();
        f1(tp, fp, fn_)
    }

    /// The mean of the labels' F1s.
    pub fn macro_f1(&self) -> f64 {
        let t = &self.0;
        let n = t.tp.len();
        if n == 0 {
            return 0.0;
        }
        (0..n).map(|l| f1(t.tp[l], t.fp[l], t.fn_[l])).sum::<f64>() / n as f64
    }
}

/// A confusion matrix: `counts[truth][predicted]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    counts: Vec<Vec<u64>>,
}

/// Precision and recall of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    pub label: String,
    pub support: u64,
    pub precision: f64,
    pub recall: f64,
}

impl Confusion {
    pub fn new(n_classes: usize) -> Confusion {
        Confusion {
            counts: vec![vec![0; n_classes]; n_classes],
        }
    }

    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.counts[truth][predicted] += 1;
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    pub fn correct(&self) -> u64 {
        (0..self.counts.len()).map(|i| self.counts[i][i]).sum()
    }

    /// Fraction correct; 0 when empty.
    pub fn accuracy(&self) -> f64 {
        ratio(self.correct(), self.total())
    }

    /// Per-class precision and recall (0 where undefined).
    pub fn per_class(&self, labels: &[String]) -> Vec<ClassMetrics> {
        (0..self.counts.len())
            .map(|c| {
                let tp = self.counts[c][c];
                let predicted: u64 = self.counts.iter().map(|row| row[c]).sum();
                let support: u64 = self.counts[c].iter().sum();
                ClassMetrics {
                    label: labels.get(c).cloned().unwrap_or_else(|| c.to_string()),
                    support,
                    precision: ratio(tp, predicted),
                    recall: ratio(tp, support),
                }
            })
            .collect()
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels() -> Vec<String> {
        vec!["NEGATIVE".into(), "POSITIVE".into()]
    }

    #[test]
    fn parses_lines() {
        let l = labels();
        assert_eq!(
            parse_line("POSITIVE\tgreat\tfilm\r", &l).unwrap(),
            Example {
                label: 1,
                text: "great\tfilm".into()
            }
        );
        assert!(parse_line("POSITIVE great", &l)
            .unwrap_err()
            .contains("TAB"));
        assert!(parse_line("MEH\tok", &l)
            .unwrap_err()
            .contains("unknown label"));
        assert!(parse_line("NEGATIVE\t  ", &l)
            .unwrap_err()
            .contains("empty"));
    }

    #[test]
    fn parse_file_reports_line_numbers() {
        let l = labels();
        let ok = parse_tsv("NEGATIVE\tbad\n\nPOSITIVE\tgood\n", &l).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(parse_tsv("NEGATIVE\tbad\noops\n", &l).unwrap_err().0, 2);
        assert_eq!(parse_tsv("", &l).unwrap_err().0, 0);
    }

    #[test]
    fn metrics_on_a_known_matrix() {
        let mut c = Confusion::new(2);
        // 3 true negatives, 1 false positive, 2 true positives, 2 false negatives.
        for (t, p) in [
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 1),
            (1, 1),
            (1, 1),
            (1, 0),
            (1, 0),
        ] {
            c.add(t, p);
        }
        assert_eq!(c.total(), 8);
        assert!((c.accuracy() - 5.0 / 8.0).abs() < 1e-12);
        let m = c.per_class(&labels());
        assert!((m[0].precision - 3.0 / 5.0).abs() < 1e-12);
        assert!((m[0].recall - 3.0 / 4.0).abs() < 1e-12);
        assert!((m[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m[1].recall - 2.0 / 4.0).abs() < 1e-12);
        assert_eq!(Confusion::new(2).accuracy(), 0.0);
    }

    #[test]
    fn parses_multilabel_lines() {
        let l: Vec<String> = vec!["care".into(), "fairness".into(), "loyalty".into()];
        let e = parse_multilabel_line("loyalty,care\tWe stand together\r", &l).unwrap();
        assert_eq!(e.labels, [0, 2]);
        assert_eq!(e.text, "We stand together");
        assert!(parse_multilabel_line("-\tnothing", &l)
            .unwrap()
            .labels
            .is_empty());
        assert!(parse_multilabel_line("care,care\tx", &l)
            .unwrap_err()
            .contains("twice"));
        assert!(parse_multilabel_line("care,\tx", &l)
            .unwrap_err()
            .contains("unknown label \"\""));
        assert!(parse_multilabel_line("care\t ", &l)
            .unwrap_err()
            .contains("empty"));
        assert!(parse_multilabel_line("care x", &l)
            .unwrap_err()
            .contains("TAB"));
        let ok = parse_lines("care\ta\n\n-\tb\n", |x| parse_multilabel_line(x, &l)).unwrap();
        assert_eq!(ok.len(), 2);
    }

    #[test]
    fn multilabel_metrics_on_known_counts() {
        let labels: Vec<String> = vec!["a".into(), "b".into()];
        let mut c = LabelCounts::new(2);
        c.add(&[0], &[0]); // a: tp
        c.add(&[0, 1], &[0]); // a: tp, b: fn
        c.add(&[], &[1]); // b: fp
        c.add(&[1], &[1]); // b: tp
        assert_eq!(c.texts(), 4);
        assert_eq!(c.exact(), 2);
        let m = c.per_label(&labels);
        assert_eq!((m[0].precision, m[0].recall, m[0].f1), (1.0, 1.0, 1.0));
        assert_eq!(m[0].support, 2);
        // b: tp 1, fp 1, fn 1.
        assert!((m[1].precision - 0.5).abs() < 1e-12);
        assert!((m[1].recall - 0.5).abs() < 1e-12);
        assert!((m[1].f1 - 0.5).abs() < 1e-12);
        // Pooled: tp 3, fp 1, fn 1 -> 6 / 8.
        assert!((c.micro_f1() - 0.75).abs() < 1e-12);
        assert!((c.macro_f1() - 0.75).abs() < 1e-12);
        assert_eq!(LabelCounts::new(3).micro_f1(), 0.0);
    }

    proptest! {
        #[test]
        fn multilabel_f1_is_one_exactly_when_every_set_is_right(
            sets in proptest::collection::vec(
                (proptest::collection::btree_set(0usize..4, 0..4),
                 proptest::collection::btree_set(0usize..4, 0..4)), 1..20)
        ) {
            let mut c = LabelCounts::new(4);
            for (t, p) in &sets {
                let t: Vec<usize> = t.iter().copied().collect();
                let p: Vec<usize> = p.iter().copied().collect();
                c.add(&t, &p);
            }
            let all_right = sets.iter().all(|(t, p)| t == p);
            let any_positive = sets.iter().any(|(t, p)| !t.is_empty() || !p.is_empty());
            prop_assert_eq!(c.exact() == c.texts(), all_right);
            if any_positive {
                prop_assert_eq!(c.micro_f1() == 1.0, all_right);
            }
            prop_assert!((0.0..=1.0).contains(&c.micro_f1()));
            prop_assert!((0.0..=1.0).contains(&c.macro_f1()));
        }

        #[test]
        fn well_formed_lines_round_trip(label in 0usize..2, text in "[^\t\r\n]*[a-z][^\t\r\n]*") {
            let l = labels();
            let line = format!("{}\t{}", l[label], text);
            let e = parse_line(&line, &l).unwrap();
            prop_assert_eq!(e.label, label);
            prop_assert_eq!(e.text, text);
        }

        #[test]
        fn arbitrary_lines_never_panic(line in ".*") {
            let _ = parse_line(&line, &labels());
        }
    }

    #[test]
    fn ner_lines_and_entity_counts() {
        let types = vec!["LOC".to_string(), "PSN".to_string()];
        let ex = parse_ner_line(
            r#"{"text": "né à Zürich", "entities": [{"label": "LOC", "start": 5, "end": 11}]}"#,
            &types,
        )
        .unwrap();
        assert_eq!(ex.entities, [(0, 5, 11)]);
        for (bad, why) in [
            (
                r#"{"text": "ab", "entities": [{"label": "ORG", "start": 0, "end": 1}]}"#,
                "not one of",
            ),
            (
                r#"{"text": "ab", "entities": [{"label": "LOC", "start": 1, "end": 3}]}"#,
                "not a span",
            ),
            (r#"{"text": " ", "entities": []}"#, "empty text"),
            (r#"LOC\tab"#, "not an NER line"),
        ] {
            let err = parse_ner_line(bad, &types).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let mut c = EntityCounts::new(2);
        // One right, one wrong span, one missed; then a text right.
        c.add(&[(0, 0, 2), (1, 3, 5), (1, 6, 8)], &[(0, 0, 2), (1, 3, 4)]);
        c.add(&[(0, 1, 2)], &[(0, 1, 2)]);
        let (p, r, f) = c.overall();
        assert_eq!((p, r), (2.0 / 3.0, 2.0 / 4.0));
        assert!((f - 2.0 * 2.0 / (2.0 * 2.0 + 1.0 + 2.0)).abs() < 1e-12);
        assert_eq!(c.exact_match(), 0.5);
        let per = c.per_type(&types);
        assert_eq!((per[0].support, per[0].f1), (2, 1.0));
        assert_eq!((per[1].support, per[1].precision), (2, 0.0));
    }
}
