//! `edge-bert-quantize keygen` and `edge-bert-quantize sign`: the host side
//! of signed bundles (see `edge_bert_model::signing`).

use std::path::{Path, PathBuf};

use edge_bert_model::bundle::Bundle;
use edge_bert_model::signing::{self, SecretKey, TrustedKeys};
use edge_bert_model::{selftest, Classifier};

use crate::Failure;

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Where to write the key pair: PATH.key (secret, mode 0600) and
    /// PATH.pub (public; copy it to the device's trusted-keys directory).
    #[arg(long, value_name = "PATH")]
    pub output: PathBuf,
}

#[derive(clap::Args)]
pub struct SignArgs {
    /// The secret key (a .key file from `keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The bundle's version (devices never go back to a lower one);
    /// default: the manifest's version + 1, or 1.
    #[arg(long, value_name = "N")]
    pub version: Option<u64>,
    /// The bundle directory to sign (in place).
    #[arg(value_name = "DIR")]
    pub bundle: PathBuf,
}

pub fn keygen(a: &KeygenArgs) -> Result<(), Failure> {
    let key = SecretKey::generate().map_err(|e| Failure(1, e.to_string()))?;
    let secret = a.output.with_extension("key");
    let public = a.output.with_extension("pub");
    for p in [&secret, &public] {
        if p.exists() {
            return Err(Failure(
                5,
                format!("{} exists; not overwritten", p.display()),
            ));
        }
    }
    if let Some(dir) = secret.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Failure(5, format!("{}: {e}", dir.display())))?;
    }
    write_new(&secret, key.to_text().as_bytes(), 0o600)?;
    write_new(&public, key.public().to_text().as_bytes(), 0o644)?;
    println!(
        "key {}: secret {} (keep it off the devices), public {}",
        key.id,
        secret.display(),
        public.display()
    );
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| Failure(5, format!("{}: {e}", path.display())))
}

/// Signs a bundle in place: its self-test is made by running it
/// (`selftest.jsonl`, listed in the manifest), the manifest gets the
/// version and key id, `manifest.sig` the signature over its bytes; then
/// the signed bundle is loaded as a device would (signature, sums,
/// self-test) before this returns.
pub fn sign(a: &SignArgs) -> Result<(), Failure> {
    let key_text = std::fs::read_to_string(&a.key)
        .map_err(|e| Failure(2, format!("{}: {e}", a.key.display())))?;
    let key = SecretKey::parse(&key_text, &a.key.display().to_string())
        .map_err(|e| Failure(2, e.to_string()))?;
    let dir = &a.bundle;
    let current = Bundle::load_dir(dir).map_err(|e| Failure(3, e.to_string()))?;
    let version = a
        .version
        .unwrap_or_else(|| current.manifest.version.map_or(1, |v| v + 1));
    signing::sign_loaded(dir, current, &key, version).map_err(|e| Failure(5, e.to_string()))?;
    // Load it back as a device that trusts this key would.
    let keys_dir = tempfile_dir()?;
    std::fs::write(keys_dir.join("signer.pub"), key.public().to_text())
        .map_err(|e| Failure(5, e.to_string()))?;
    let checked = (|| {
        let keys = TrustedKeys::load_dir(&keys_dir)?;
        let (bundle, signed) = Bundle::load_dir_signed(dir, &keys, version)?;
        let cases = selftest::parse(&edge_bert_model::bundle::read_listed(
            dir,
            &bundle.manifest,
            selftest::FILE,
        )?)?;
        let mut clf = Classifier::new(&bundle, None)?;
        let worst = selftest::run(&mut clf, &cases)?;
        Ok::<_, edge_bert_model::Error>((signed, worst, cases.len()))
    })();
    let _ = std::fs::remove_dir_all(&keys_dir);
    let (signed, worst, n) =
        checked.map_err(|e| Failure(1, format!("the signed bundle does not load: {e}")))?;
    println!(
        "signed {} version {} with key {}; self-test: {n} texts, largest difference {worst:.2e}",
        dir.display(),
        signed.version,
        signed.key_id
    );
    Ok(())
}

/// A fresh private directory under the system's temporary directory.
fn tempfile_dir() -> Result<PathBuf, Failure> {
    let dir = std::env::temp_dir().join(format!(
        "edge-bert-sign-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir(&dir).map_err(|e| Failure(5, format!("{}: {e}", dir.display())))?;
    Ok(dir)
}
