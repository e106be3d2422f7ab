//! Loading a model bundle from a directory or from the binary itself, with
//! every file checked against the manifest before it is used.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manifest::{sha256_hex, Manifest};
use crate::rows::ModelFile;

/// Where a bundle was loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A directory on disk.
    Dir(PathBuf),
    /// Compiled into the binary (`embedded-model` feature).
    Embedded,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Dir(p) => write!(f, "{}", p.display()),
            Source::Embedded => f.write_str("<embedded>"),
        }
    }
}

/// A verified bundle: manifest plus the bytes of the model and tokenizer.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    pub source: Source,
    pub model_bytes: Cow<'static, [u8]>,
    pub tokenizer_bytes: Cow<'static, [u8]>,
    /// The open file `model_bytes` were read from, if known: the engine
    /// reads the word-embedding table from it ([`crate::rows`]).
    pub model_file: Option<ModelFile>,
}

impl Bundle {
    /// Loads `dir/manifest.json` and the files it names, checking sizes and hashes.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Bundle> {
        let (bundle, check) = Bundle::load_dir_deferred(dir)?;
        check.run(&bundle.model_bytes)?;
        Ok(bundle)
    }

    /// Like [`Bundle::load_dir`], but leaves the model file's SHA-256 (the
    /// slow part) to the caller: run the returned check before trusting the
    /// model, for example on another thread while the model is decoded.
    /// Everything else, the model file's size included, is checked here.
    pub fn load_dir_deferred(dir: impl AsRef<Path>) -> Result<(Bundle, ModelCheck)> {
        Bundle::load_checked(dir.as_ref(), |_| Ok(()))
    }

    /// Like [`Bundle::load_dir`], for a device that trusts `keys`: the
    /// signature (`manifest.sig`) is checked over the exact bytes of
    /// `manifest.json` before anything is parsed, then the manifest must
    /// name the same key and a `version` of at least `min_version` (the
    /// highest this device has run: no rollback). Every other file is then
    /// checked against the signed sums as usual.
    pub fn load_dir_signed(
        dir: impl AsRef<Path>,
        keys: &crate::signing::TrustedKeys,
        min_version: u64,
    ) -> Result<(Bundle, Signed)> {
        let dir = dir.as_ref();
        let mut key_id = String::new();
        let (bundle, check) = Bundle::load_checked(dir, |manifest| {
            let sig_path = dir.join(crate::signing::SIGNATURE_FILE);
            let sig = match read_file(&sig_path, 4096) {
                Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                Err(Error::MissingFile { .. }) => None,
                Err(e) => return Err(e),
            };
            key_id = keys.verify(manifest, sig.as_deref())?;
            Ok(())
        })?;
        check.run(&bundle.model_bytes)?;
        let m = &bundle.manifest;
        if m.key_id.as_deref() != Some(key_id.as_str()) {
            return Err(Error::Signature(format!(
                "the manifest names key {:?} but was signed with {key_id}",
                m.key_id
            )));
        }
        let version = m
            .version
            .ok_or_else(|| Error::Signature("a signed manifest must have a version".into()))?;
        if version < min_version {
            return Err(Error::Signature(format!(
                "version {version} is older than version {min_version}, which this device has already run (no rollback)"
            )));
        }
        Ok((bundle, Signed { key_id, version }))
    }

    /// Loads a bundle; `check` sees the exact bytes of `manifest.json`
    /// before they are parsed.
    fn load_checked(
        dir: &Path,
        check: impl FnOnce(&[u8]) -> Result<()>,
    ) -> Result<(Bundle, ModelCheck)> {
        if !dir.is_dir() {
            return Err(Error::MissingModelDir {
                path: dir.to_path_buf(),
            });
        }
        let manifest_path = dir.join("manifest.json");
        let text = read_file(&manifest_path, MAX_MANIFEST_BYTES)?;
        check(&text)?;
        let text = String::from_utf8(text).map_err(|_| Error::Manifest {
            path: manifest_path.clone(),
            reason: "not valid UTF-8".into(),
        })?;
        let manifest = Manifest::parse(&text).map_err(|reason| Error::Manifest {
            path: manifest_path.clone(),
            reason,
        })?;
        let model_path = dir.join(&manifest.model);
        // Read through a handle that is kept: the rows the engine later
        // reads from it are from the very file that was hashed.
        let expected = listed(dir, &manifest, &manifest.model)?.bytes;
        let (model_bytes, model_file) = read_kept(&model_path, expected)?;
        let check = ModelCheck {
            dir: dir.to_path_buf(),
            manifest: manifest.clone(),
        };
        check_size(dir, &manifest, &manifest.model, &model_bytes)?;
        let tokenizer_bytes = read_verified(dir, &manifest, &manifest.tokenizer)?;
        let bundle = Bundle {
            manifest,
            source: Source::Dir(dir.to_path_buf()),
            model_bytes: Cow::Owned(model_bytes),
            tokenizer_bytes: Cow::Owned(tokenizer_bytes),
            model_file: Some(ModelFile::new(model_file, model_path, 0)),
        };
        Ok((bundle, check))
    }

    /// Builds a bundle from in-memory parts (used for the embedded model),
    /// checking them against the manifest exactly as files would be. It
    /// has no `model_file`; the embedded bundle sets it.
    pub fn from_static(
        manifest_json: &str,
        model: &'static [u8],
        tokenizer: &'static [u8],
    ) -> Result<Bundle> {
        let path = PathBuf::from("<embedded>/manifest.json");
        let manifest = Manifest::parse(manifest_json).map_err(|reason| Error::Manifest {
            path: path.clone(),
            reason,
        })?;
        let base = Path::new("<embedded>");
        verify(base, &manifest, &manifest.model, model)?;
        verify(base, &manifest, &manifest.tokenizer, tokenizer)?;
        Ok(Bundle {
            manifest,
            source: Source::Embedded,
            model_bytes: Cow::Borrowed(model),
            tokenizer_bytes: Cow::Borrowed(tokenizer),
            model_file: None,
        })
    }
}

/// What [`Bundle::load_dir_signed`] verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The trusted key that signed the bundle.
    pub key_id: String,
    /// The bundle's version.
    pub version: u64,
}

/// Reads a file the manifest lists, checked by size and SHA-256 (for the
/// bundle's other files, such as its self-test).
pub fn read_listed(dir: &Path, manifest: &Manifest, name: &str) -> Result<Vec<u8>> {
    read_verified(dir, manifest, name)
}

/// The model file's hash check that [`Bundle::load_dir_deferred`] left to do.
#[must_use = "the model file is not verified until the check runs"]
#[derive(Debug)]
pub struct ModelCheck {
    dir: PathBuf,
    manifest: Manifest,
}

impl ModelCheck {
    /// Checks the model file's bytes against the manifest's SHA-256.
    pub fn run(&self, model_bytes: &[u8]) -> Result<()> {
        verify(&self.dir, &self.manifest, &self.manifest.model, model_bytes)
    }
}

/// The error for a file that could not be opened or read.
fn file_error(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::MissingFile {
            path: path.to_path_buf(),
        }
    } else {
        Error::io(path, e)
    }
}

/// The longest `manifest.json` read (real ones are about 1 KiB).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Opens a file that must be a regular file of at most `limit` bytes
/// (exactly `limit` when `exact`), before reading a byte of it: a FIFO,
/// a device such as `/dev/zero` or a directory is refused at once, never
/// read (which could wait forever or fill the memory). The file is
/// opened non-blocking, so not even a FIFO without a writer can hold the
/// open; its type is then read from the open handle (no race with a swap).
fn open_regular(path: &Path, limit: u64, exact: bool) -> Result<(std::fs::File, u64)> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| file_error(path, e))?;
    let meta = file.metadata().map_err(|e| file_error(path, e))?;
    let t = meta.file_type();
    if !t.is_file() {
        let kind = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{kind}, not a regular file; not read"),
            ),
        ));
    }
    let len = meta.len();
    if exact && len != limit {
        return Err(Error::SizeMismatch {
            path: path.to_path_buf(),
            expected: limit,
            actual: len,
        });
    }
    if len > limit {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{len} bytes, over the {limit}-byte limit; not read"),
            ),
        ));
    }
    Ok((file, len))
}

/// Reads a whole regular file of at most `limit` bytes.
fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    read_open(path, open_regular(path, limit, false)?)
}

/// Reads what [`open_regular`] opened, never more than it said the file
/// holds (plus one byte, to see a file that grew).
fn read_open(path: &Path, (file, len): (std::fs::File, u64)) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX))
        .map_err(|e| {
            Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::OutOfMemory, e),
            )
        })?;
    (&file)
        .take(len + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(path, e))?;
    Ok(bytes)
}

/// Reads a whole regular file of exactly `expected` bytes and keeps its
/// handle open.
fn read_kept(path: &Path, expected: u64) -> Result<(Vec<u8>, std::sync::Arc<std::fs::File>)> {
    let (file, len) = open_regular(path, expected, true)?;
    let file = std::sync::Arc::new(file);
    let bytes = read_open(
        path,
        (file.try_clone().map_err(|e| file_error(path, e))?, len),
    )?;
    Ok((bytes, file))
}

fn read_verified(dir: &Path, manifest: &Manifest, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let expected = listed(dir, manifest, name)?.bytes;
    let bytes = read_open(&path, open_regular(&path, expected, true)?)?;
    verify(dir, manifest, name, &bytes)?;
    Ok(bytes)
}

/// The manifest entry for `name`.
fn listed<'m>(
    dir: &Path,
    manifest: &'m Manifest,
    name: &str,
) -> Result<&'m crate::manifest::FileEntry> {
    manifest.file(name).ok_or_else(|| Error::Manifest {
        path: dir.join("manifest.json"),
        reason: format!("{name} is not listed in files"),
    })
}

/// Checks the size of `bytes` against the manifest entry for `name`.
fn check_size<'m>(
    dir: &Path,
    manifest: &'m Manifest,
    name: &str,
    bytes: &[u8],
) -> Result<&'m crate::manifest::FileEntry> {
    let entry = listed(dir, manifest, name)?;
    if entry.bytes != bytes.len() as u64 {
        return Err(Error::SizeMismatch {
            path: dir.join(name),
            expected: entry.bytes,
            actual: bytes.len() as u64,
        });
    }
    Ok(entry)
}

/// Checks `bytes` against the manifest entry for `name`: size, then SHA-256.
pub fn verify(dir: &Path, manifest: &Manifest, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let entry = check_size(dir, manifest, name, bytes)?;
    let actual = sha256_hex(bytes);
    if !actual.eq_ignore_ascii_case(&entry.sha256) {
        return Err(Error::ChecksumMismatch {
            path,
            expected: entry.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// Writing bundles (host tools only: the `write` feature).
#[cfg(feature = "write")]
pub mod write {
    use std::path::Path;

    use crate::error::{Error, Result};
    use crate::manifest::{sha256_hex, FileEntry, Manifest};

    /// `base` with its `files` list made from `files` (path, bytes): every
    /// file's size and SHA-256, sorted by path.
    pub fn manifest_for(base: &Manifest, files: &[(&str, &[u8])]) -> Manifest {
        let mut entries: Vec<FileEntry> = files
            .iter()
            .map(|(path, bytes)| FileEntry {
                path: (*path).to_string(),
                sha256: sha256_hex(bytes),
                bytes: bytes.len() as u64,
            })
            .collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Manifest {
            files: entries,
            ..base.clone()
        }
    }

    /// Writes a bundle directory `dir`: `files` and `manifest`, which
    /// [`manifest_for`] made from the same files (each listed file must be
    /// among them with its size; the sums are not computed again: the
    /// caller reloads the bundle, which checks them). It is written into a
    /// temporary sibling directory first and renamed into place, so `dir`
    /// is either the old bundle or the whole new one (an existing `dir` is
    /// replaced).
    pub fn write_dir(dir: &Path, manifest: &Manifest, files: &[(&str, &[u8])]) -> Result<()> {
        let bad = |reason: String| Error::Manifest {
            path: dir.join("manifest.json"),
            reason,
        };
        manifest.validate().map_err(bad)?;
        for entry in &manifest.files {
            let found = files.iter().find(|(path, _)| *path == entry.path);
            if found.map(|(_, bytes)| bytes.len() as u64) != Some(entry.bytes) {
                return Err(bad(format!(
                    "{} is not among the files written with its {} bytes",
                    entry.path, entry.bytes
                )));
            }
        }
        let name = dir
            .file_name()
            .ok_or_else(|| Error::InvalidArgument(format!("{} has no file name", dir.display())))?;
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = parent.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let write = || -> std::io::Result<()> {
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp)?;
            }
            std::fs::create_dir(&tmp)?;
            for (path, bytes) in files {
                std::fs::write(tmp.join(path), bytes)?;
            }
            let json = serde_json::to_string_pretty(manifest).map_err(std::io::Error::other)?;
            std::fs::write(tmp.join("manifest.json"), format!("{json}\n"))?;
            if dir.exists() {
                std::fs::remove_dir_all(dir)?;
            }
            std::fs::rename(&tmp, dir)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            Error::io(dir, e)
        })
    }
}
