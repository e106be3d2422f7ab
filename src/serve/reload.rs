//! Loading a model to serve, at start-up and on reload (SIGHUP or the
//! `reload` op): verify (signature and anti-rollback when keys are
//! trusted), build every bucket's plan, warm it up, run the bundle's
//! self-test, check the memory budget, and only then hand it to the worker,
//! which swaps it in between two texts. On any failure the old model keeps
//! serving; the error is logged and `health` reports it.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use edge_bert_model::bundle::{read_listed, Bundle, Signed};
use edge_bert_model::manifest::Task;
use edge_bert_model::signing::TrustedKeys;
use edge_bert_model::{selftest, Classifier, Error, Result};
use edge_bert_wire::label_tokens;
use serde::Serialize;
use serde_json::{json, Value};

use super::{peak_rss_kib, reset_peak_rss, rss_kib, warm_up, worker, Shared};

/// Where the served model comes from, and how a new one is checked.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The bundle directory (`--model`; with slots, the `current` link).
    pub dir: PathBuf,
    /// Keys a bundle must be signed with (`--trusted-keys`); `None`:
    /// unsigned bundles are served (and that is logged).
    pub keys: Option<TrustedKeys>,
    /// The file holding the highest version run (`--state-dir`), kept
    /// when keys are trusted.
    pub high_water: Option<PathBuf>,
    /// `--memory-budget`, MiB: a reload whose peak (old and new model
    /// together, plus the sessions' buffers) is over it is refused.
    pub memory_budget_mib: Option<u64>,
}

/// Which model answers: shown by `health` and `info`, and (as `name@version`)
/// in every classification.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModelId {
    pub name: String,
    /// The bundle's signed version (none for an unsigned bundle).
    pub version: Option<u64>,
    /// SHA-256 of the model file.
    pub sha256: String,
    /// The key that signed the bundle.
    pub key_id: Option<String>,
}

impl ModelId {
    pub fn of(clf: &Classifier, signed: Option<&Signed>) -> ModelId {
        let m = clf.manifest();
        ModelId {
            name: m.name.clone(),
            version: signed.map(|s| s.version).or(m.version),
            sha256: m
                .file(&m.model)
                .map(|f| f.sha256.clone())
                .unwrap_or_default(),
            key_id: signed.map(|s| s.key_id.clone()),
        }
    }

    /// `name@version`, or the name alone.
    pub fn tag(&self) -> String {
        match self.version {
            Some(v) => format!("{}@{v}", self.name),
            None => self.name.clone(),
        }
    }
}

/// The model being served, as sessions and ops see it; replaced whole when
/// a reload swaps a new model in.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) id: ModelId,
    /// Labels as JSON string tokens, escaped once.
    pub(crate) labels: Vec<String>,
    /// An NER model's entity types as JSON string tokens (empty for other
    /// tasks).
    pub(crate) kinds: Vec<String>,
    /// [`ModelId::tag`] as a JSON string token.
    pub(crate) token: String,
    /// A multi-label model's own threshold (`None`: not multi-label).
    pub(crate) threshold: Option<f32>,
    pub(crate) info: Value,
}

impl Served {
    pub(crate) fn new(clf: &Classifier, id: ModelId) -> Served {
        let m = clf.manifest();
        let mut info = json!({
            "model": m.name,
            "task": clf.task().name(),
            "model_version": id.version,
            "sha256": id.sha256,
            "key_id": id.key_id,
            "precision": m.precision,
            "labels": m.labels,
            "max_seq_len": m.max_seq_len,
            "buckets": clf.engine().buckets(),
            "version": env!("CARGO_PKG_VERSION"),
        });
        if let Task::Embed { dim, pooling } = clf.task() {
            info["dim"] = dim.into();
            info["pooling"] = pooling.name().into();
        }
        if let Some(tags) = clf.tag_set() {
            info["entity_types"] = json!(tags.types());
        }
        let threshold = match clf.task() {
            Task::Multilabel { threshold } => Some(threshold),
            _ => None,
        };
        if let Some(t) = threshold {
            // As the answers write it (`0.3`, not the f64 of the f32).
            info["threshold"] = serde_json::from_str(&t.to_string()).unwrap_or(json!(t));
        }
        Served {
            threshold,
            labels: label_tokens(&m.labels),
            kinds: clf
                .tag_set()
                .map_or_else(Vec::new, |t| label_tokens(t.types())),
            token: Value::from(id.tag()).to_string(),
            id,
            info,
        }
    }
}

/// What `health` says about reloads.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Status {
    /// Reloads that swapped a model in.
    pub(crate) reloads: u64,
    /// Reloads refused or failed.
    pub(crate) failures: u64,
    /// Why the last reload failed, until one succeeds.
    pub(crate) last_error: Option<String>,
    /// How long the last successful reload took, ms.
    pub(crate) last_ms: Option<u64>,
}

/// The highest version this device has run (0 when none is recorded).
pub fn read_high_water(path: &Path) -> Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map_err(|_| {
            Error::Signature(format!(
                "{}: not a version number ({:?}); refusing to guess",
                path.display(),
                s.trim()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Records `version` as run, if it is higher than the one recorded
/// (written to a temporary file, synced, renamed over).
pub fn raise_high_water(path: &Path, version: u64) -> Result<()> {
    if read_high_water(path)? >= version {
        return Ok(());
    }
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{version}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| Error::io(path, e))
}

/// Loads the bundle at `source.dir` for serving: verified (signature and
/// version when keys are trusted), every plan built and warmed up, its
/// self-test run. Returns the classifier, what was verified, and the
/// self-test's largest difference (`None`: the bundle has no self-test).
pub fn load(source: &ModelSource) -> Result<(Classifier, Option<Signed>, Option<f32>)> {
    let (bundle, signed) = match (&source.keys, &source.high_water) {
        (Some(keys), high_water) => {
            let min = match high_water {
                Some(p) => read_high_water(p)?,
                None => 0,
            };
            let (b, s) = Bundle::load_dir_signed(&source.dir, keys, min)?;
            (b, Some(s))
        }
        (None, _) => {
            log::warn!(
                "{}: no --trusted-keys, so the bundle is served unsigned",
                source.dir.display()
            );
            (Bundle::load_dir(&source.dir)?, None)
        }
    };
    let cases = match bundle.manifest.file(selftest::FILE) {
        Some(_) => Some(selftest::parse(&read_listed(
            &source.dir,
            &bundle.manifest,
            selftest::FILE,
        )?)?),
        None if signed.is_some() => {
            return Err(Error::Signature(format!(
                "a signed bundle must carry its self-test ({})",
                selftest::FILE
            )))
        }
        None => None,
    };
    let mut clf = Classifier::from_bundle(bundle, None, false)?;
    warm_up(&mut clf)?;
    let worst = match cases {
        Some(cases) => Some(selftest::run(&mut clf, &cases)?),
        None => None,
    };
    Ok((clf, signed, worst))
}

/// Clears the reloading flag when dropped.
struct Running<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Reloads the model from its source and swaps it in. `Ok` is the report
/// (`reload` op's answer); `Err` says why the old model is still serving.
pub(crate) fn run(shared: &Shared) -> std::result::Result<Value, String> {
    let result = attempt(shared);
    let mut status = shared
        .reload_status
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match &result {
        Ok(report) => {
            status.reloads += 1;
            status.last_error = None;
            status.last_ms = report["ms"].as_u64();
            log::info!("reload: {report}");
        }
        Err(why) => {
            status.failures += 1;
            status.last_error = Some(why.clone());
            log::error!("reload refused, the old model keeps serving: {why}");
        }
    }
    result
}

fn attempt(shared: &Shared) -> std::result::Result<Value, String> {
    let Some(source) = &shared.source else {
        return Err(
            "nothing to reload: the embedded model is served (start with --model DIR)".into(),
        );
    };
    if shared.reloading.swap(true, Ordering::SeqCst) {
        return Err("a reload is already running".into());
    }
    let _running = Running(&shared.reloading);
    let started = Instant::now();
    let rss_before = rss_kib().unwrap_or(0);
    reset_peak_rss();
    let (clf, signed, worst) = load(source).map_err(|e| e.to_string())?;
    let peak = peak_rss_kib().unwrap_or(0);
    let id = ModelId::of(&clf, signed.as_ref());
    if let Some(budget) = source.memory_budget_mib {
        let (peak_mib, buffers_mib) = shared.cfg.memory_need_mib(peak, &clf);
        if peak_mib + buffers_mib > budget {
            return Err(format!(
                "{}: peak memory during the reload was {peak_mib} MiB (old and new model) plus {buffers_mib} MiB of session buffers, over --memory-budget {budget}",
                id.tag(),
            ));
        }
    }
    let served = Arc::new(Served::new(&clf, id.clone()));
    worker::swap(shared, clf, served.clone())?;
    *shared.served.lock().unwrap_or_else(|e| e.into_inner()) = served;
    if let (Some(path), Some(s)) = (&source.high_water, &signed) {
        if let Err(e) = raise_high_water(path, s.version) {
            log::error!("recording version {}: {e}", s.version);
        }
    }
    Ok(json!({
        "reload": "ok",
        "model": id,
        "ms": started.elapsed().as_millis() as u64,
        "extra_rss_kib": peak.saturating_sub(rss_before),
        "selftest_max_diff": worst,
    }))
}
