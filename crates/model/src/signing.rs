//! Signed bundles: Ed25519 over the exact bytes of `manifest.json`, which
//! already holds the size and SHA-256 of every other file of the bundle,
//! so one signature covers the whole bundle.
//!
//! Three one-line text files, each `<kind> ed25519 <key id> <hex>`:
//!
//! - `NAME.pub`, a public key: `edge-bert-public-key ed25519 1a2b3c4d5e6f7a8b <64 hex>`;
//! - `NAME.key`, a secret key (the 32-byte seed; host only, mode 0600):
//!   `edge-bert-secret-key ed25519 <id> <64 hex>`;
//! - a bundle's `manifest.sig`: `edge-bert-signature ed25519 <id> <128 hex>`.
//!
//! The key id is the first 8 bytes of the SHA-256 of the public key, in hex.
//! The device holds a directory of trusted public keys ([`TrustedKeys`]);
//! several may be trusted at once, so keys can be rotated. Verification is
//! pure: bytes in, the key that signed them (or why not) out. Signing
//! (`write` feature) is for the host tool.

use std::path::Path;

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A bundle's signature file name, next to its `manifest.json`.
pub const SIGNATURE_FILE: &str = "manifest.sig";

const PUBLIC: &str = "edge-bert-public-key";
#[cfg(feature = "write")]
const SECRET: &str = "edge-bert-secret-key";
const SIGNATURE: &str = "edge-bert-signature";
const ALGORITHM: &str = "ed25519";

fn bad(what: impl Into<String>) -> Error {
    Error::Signature(what.into())
}

/// The id of a public key: the first 8 bytes of its SHA-256, in hex.
pub fn key_id(public: &[u8; 32]) -> String {
    hex(&Sha256::digest(public)[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Splits `<kind> ed25519 <id> <hex>` and checks kind and algorithm.
fn fields<'a>(text: &'a str, kind: &str, what: &str) -> Result<(&'a str, &'a str)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [k, a, id, hex] if *k == kind && *a == ALGORITHM => Ok((id, hex)),
        [k, a, ..] if *k == kind => Err(bad(format!(
            "{what}: algorithm {a:?} is not supported (only ed25519)"
        ))),
        _ => Err(bad(format!(
            "{what}: not an edge-bert {kind} line (`{kind} ed25519 <id> <hex>`)"
        ))),
    }
}

/// A public key and its id.
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub id: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses a `.pub` file's text; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<PublicKey> {
        let (id, hex) = fields(text, PUBLIC, what)?;
        let bytes: [u8; 32] =
            unhex(hex).ok_or_else(|| bad(format!("{what}: the key is not 64 hex digits")))?;
        if key_id(&bytes) != id {
            return Err(bad(format!(
                "{what}: key id {id} does not match the key (it is {})",
                key_id(&bytes)
            )));
        }
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| bad(format!("{what}: not a valid Ed25519 public key")))?;
        Ok(PublicKey {
            id: id.to_string(),
            key,
        })
    }

    /// The `.pub` file's text.
    pub fn to_text(&self) -> String {
        format!(
            "{PUBLIC} {ALGORITHM} {} {}\n",
            self.id,
            hex(self.key.as_bytes())
        )
    }
}

/// A parsed `manifest.sig`.
#[derive(Debug, Clone)]
pub struct BundleSignature {
    pub key_id: String,
    signature: Signature,
}

impl BundleSignature {
    pub fn parse(text: &str) -> Result<BundleSignature> {
        let (id, hex) = fields(text, SIGNATURE, SIGNATURE_FILE)?;
        let bytes: [u8; 64] = unhex(hex).ok_or_else(|| {
            bad(format!(
                "{SIGNATURE_FILE}: the signature is not 128 hex digits"
            ))
        })?;
        Ok(BundleSignature {
            key_id: id.to_string(),
            signature: Signature::from_bytes(&bytes),
        })
    }

    pub fn to_text(&self) -> String {
        format!(
            "{SIGNATURE} {ALGORITHM} {} {}\n",
            self.key_id,
            hex(&self.signature.to_bytes())
        )
    }
}

/// The public keys a device trusts.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
    /// Where they were read from, for messages.
    pub source: String,
}

impl TrustedKeys {
    /// Reads every `*.pub` file in `dir`. A directory with no key, or a
    /// key file that does not parse, is an error: a device told to check
    /// signatures must not silently check nothing.
    pub fn load_dir(dir: &Path) -> Result<TrustedKeys> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut keys = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if path.extension().is_none_or(|e| e != "pub") {
                continue;
            }
            let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
            if !meta.is_file() || meta.len() > 4096 {
                return Err(bad(format!(
                    "{}: not a key file (a regular file of at most 4 KiB)",
                    path.display()
                )));
            }
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            keys.push(PublicKey::parse(&text, &path.display().to_string())?);
        }
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        if keys.is_empty() {
            return Err(bad(format!("no *.pub key in {}", dir.display())));
        }
        Ok(TrustedKeys {
            keys,
            source: dir.display().to_string(),
        })
    }

    /// The trusted key ids, sorted.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Checks `signature` (a `manifest.sig`'s text, `None` when the bundle
    /// has none) over `manifest` (the exact bytes of `manifest.json`).
    /// Returns the id of the key that signed it.
    pub fn verify(&self, manifest: &[u8], signature: Option<&str>) -> Result<String> {
        let text = signature.ok_or_else(|| {
            bad(format!(
                "the bundle is not signed (no {SIGNATURE_FILE}) and keys are trusted"
            ))
        })?;
        let sig = BundleSignature::parse(text)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == sig.key_id)
            .ok_or_else(|| {
                bad(format!(
                    "signed with key {}, which is not trusted here (trusted: {})",
                    sig.key_id,
                    self.ids().join(", ")
                ))
            })?;
        key.key.verify_strict(manifest, &sig.signature).map_err(|_| {
            bad(format!(
                "the signature by key {} does not match manifest.json (tampered, or signed before a change)",
                key.id
            ))
        })?;
        Ok(key.id.clone())
    }
}

/// A secret key (host only).
#[cfg(feature = "write")]
pub struct SecretKey {
    key: ed25519_dalek::SigningKey,
    pub id: String,
}

#[cfg(feature = "write")]
impl SecretKey {
    /// A key from a 32-byte seed (from the OS's random source).
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let id = key_id(key.verifying_key().as_bytes());
        SecretKey { key, id }
    }

    /// A new key, seeded from `/dev/urandom`.
    pub fn generate() -> Result<SecretKey> {
        use std::io::Read;
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(|e| Error::io("/dev/urandom", e))?;
        Ok(SecretKey::from_seed(seed))
    }

    /// Parses a `.key` file's text.
    pub fn parse(text: &str, what: &str) -> Result<SecretKey> {
        let (id, hex) = fields(text, SECRET, what)?;
        let seed: [u8; 32] =
            unhex(hex).ok_or_else(|| bad(format!("{what}: the key is not 64 hex digits")))?;
        let key = SecretKey::from_seed(seed);
        if key.id != id {
            return Err(bad(format!(
                "{what}: key id {id} does not match the key (it is {})",
                key.id
            )));
        }
        Ok(key)
    }

    pub fn to_text(&self) -> String {
        format!(
            "{SECRET} {ALGORITHM} {} {}\n",
            self.id,
            hex(&self.key.to_bytes())
        )
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            id: self.id.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a manifest's exact bytes.
    pub fn sign(&self, manifest: &[u8]) -> BundleSignature {
        use ed25519_dalek::Signer;
        BundleSignature {
            key_id: self.id.clone(),
            signature: self.key.sign(manifest),
        }
    }
}

/// Signs the bundle in `dir` in place: its self-test is made by running
/// it ([`crate::selftest::make`] on [`crate::selftest::SAMPLE_TEXTS`]),
/// the manifest gets `version` and the key id, and `manifest.sig` the
/// signature over the manifest's exact bytes. Files are replaced through a
/// temporary file and a rename.
#[cfg(feature = "write")]
pub fn sign_bundle(dir: &Path, key: &SecretKey, version: u64) -> Result<()> {
    sign_loaded(dir, crate::bundle::Bundle::load_dir(dir)?, key, version)
}

/// [`sign_bundle`] for a bundle the caller has already loaded from `dir`
/// (so it is read and checked once).
#[cfg(feature = "write")]
pub fn sign_loaded(
    dir: &Path,
    bundle: crate::bundle::Bundle,
    key: &SecretKey,
    version: u64,
) -> Result<()> {
    use crate::{selftest, Classifier};
    let mut clf = Classifier::new(&bundle, None)?;
    let tests = selftest::make(&mut clf, &selftest::SAMPLE_TEXTS)?;
    drop(clf);
    drop(bundle);
    replace(dir, selftest::FILE, &tests)?;
    reseal(dir, key, Some(version))
}

/// Lists every file of the bundle in `dir` again from what is on disk
/// (size and SHA-256 of each file the manifest names, plus the self-test
/// if present), sets the key id (and `version`, when given) and signs the
/// manifest. It checks nothing about the files: that is the device's job.
#[cfg(feature = "write")]
pub fn reseal(dir: &Path, key: &SecretKey, version: Option<u64>) -> Result<()> {
    use crate::manifest::{sha256_hex, FileEntry, Manifest};
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
    let mut m = Manifest::parse(&text).map_err(|reason| Error::Manifest {
        path: manifest_path.clone(),
        reason,
    })?;
    let mut names: Vec<String> = m.files.iter().map(|f| f.path.clone()).collect();
    if dir.join(crate::selftest::FILE).exists() && !names.iter().any(|n| n == crate::selftest::FILE)
    {
        names.push(crate::selftest::FILE.into());
    }
    names.sort();
    m.files = names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            Ok(FileEntry {
                path: name,
                sha256: sha256_hex(&bytes),
                bytes: bytes.len() as u64,
            })
        })
        .collect::<Result<_>>()?;
    if let Some(v) = version {
        m.version = Some(v);
    }
    m.key_id = Some(key.id.clone());
    let json = serde_json::to_string_pretty(&m).map_err(|e| bad(e.to_string()))?;
    let bytes = format!("{json}\n").into_bytes();
    let signature = key.sign(&bytes).to_text();
    replace(dir, "manifest.json", &bytes)?;
    replace(dir, SIGNATURE_FILE, signature.as_bytes())
}

/// Writes `bytes` to `dir/name` through a temporary file and a rename.
#[cfg(feature = "write")]
fn replace(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(&path, e)
        })
}

#[cfg(all(test, feature = "write"))]
mod tests {
    use super::*;

    fn trusted(keys: &[&SecretKey]) -> TrustedKeys {
        let dir = tempfile::tempdir().unwrap();
        for (i, k) in keys.iter().enumerate() {
            std::fs::write(dir.path().join(format!("k{i}.pub")), k.public().to_text()).unwrap();
        }
        TrustedKeys::load_dir(dir.path()).unwrap()
    }

    #[test]
    fn signatures_verify_and_anything_else_is_refused() {
        let a = SecretKey::from_seed([7; 32]);
        let b = SecretKey::from_seed([9; 32]);
        let keys = trusted(&[&a]);
        let manifest = br#"{"name":"m","version":3}"#;
        let sig = a.sign(manifest).to_text();
        assert_eq!(keys.verify(manifest, Some(&sig)).unwrap(), a.id);
        // Round trips through the file texts.
        assert_eq!(SecretKey::parse(&a.to_text(), "a.key").unwrap().id, a.id);
        let p = PublicKey::parse(&a.public().to_text(), "a.pub").unwrap();
        assert_eq!(p.id, a.id);
        // One byte changed in the manifest.
        let mut tampered = manifest.to_vec();
        tampered[10] ^= 1;
        let e = keys.verify(&tampered, Some(&sig)).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        // Another key's signature.
        let e = keys.verify(manifest, Some(&b.sign(manifest).to_text()));
        assert!(e.unwrap_err().to_string().contains("not trusted"));
        // No signature, a damaged one, a lying key id.
        assert!(keys
            .verify(manifest, None)
            .unwrap_err()
            .to_string()
            .contains("not signed"));
        let mut damaged = sig.clone();
        damaged.replace_range(damaged.len() - 3..damaged.len() - 1, "00");
        assert!(keys.verify(manifest, Some(&damaged)).is_err());
        let liar = b.sign(manifest).to_text().replace(&b.id, &a.id);
        assert!(keys.verify(manifest, Some(&liar)).is_err());
        assert!(keys.verify(manifest, Some("garbage")).is_err());
        // Two trusted keys (rotation): either verifies.
        let both = trusted(&[&a, &b]);
        assert!(both
            .verify(manifest, Some(&b.sign(manifest).to_text()))
            .is_ok());
        assert_eq!(both.ids().len(), 2);
    }

    #[test]
    fn key_files_are_checked() {
        let a = SecretKey::from_seed([1; 32]);
        let text = a.public().to_text();
        assert!(PublicKey::parse(&text.replace("ed25519", "rsa"), "x").is_err());
        let wrong_id = text.replacen(&a.id, "0000000000000000", 1);
        assert!(PublicKey::parse(&wrong_id, "x")
            .unwrap_err()
            .to_string()
            .contains("does not match"));
        let empty = tempfile::tempdir().unwrap();
        assert!(TrustedKeys::load_dir(empty.path()).is_err());
    }
}
