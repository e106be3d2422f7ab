//! Labelled data files and accuracy metrics (pure, but for [`read_tsv`];
//! no model).
//!
//! A data file is UTF-8 text, one example per line: `LABEL<TAB>text`, with
//! the label spelled as in the bundle's manifest.

use std::path::Path;

use serde::Serialize;

use crate::error::Error;

/// Reads and parses a data file; errors name the file and, where there is
/// one, the line.
pub fn read_tsv(path: &Path, labels: &[String]) -> Result<Vec<Example>, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        Error::Data {
            path: path.to_path_buf(),
            line: 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count(),
            reason: format!("not valid UTF-8 (byte {at})"),
        }
    })?;
    parse_tsv(&text, labels).map_err(|(line, reason)| {
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
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_line(line, labels).map_err(|r| (i + 1, r))?);
    }
    if out.is_empty() {
        return Err((0, "no examples".into()));
    }
    Ok(out)
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

    proptest! {
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
}
