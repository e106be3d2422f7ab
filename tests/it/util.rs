//! Shared helpers: paths to the committed bundles, the golden reference
//! files, cached classifiers and a runner for the `edge-bert` binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

use edge_bert_model::Classifier;
use serde::Deserialize;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn tiny_dir() -> PathBuf {
    root().join("models/tiny")
}

pub fn fp32_dir() -> PathBuf {
    root().join("models/sentiment-fp32")
}

pub fn int8_dir() -> PathBuf {
    root().join("models/sentiment-int8")
}

/// One line of a bundle's `reference.jsonl`.
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub text: String,
    pub input_ids: Vec<u32>,
    pub truncated: bool,
    pub logits: Vec<f32>,
}

pub fn references(dir: &Path) -> Vec<Reference> {
    references_file(&dir.join("reference.jsonl"))
}

pub fn references_file(path: &Path) -> Vec<Reference> {
    let text = std::fs::read_to_string(path).expect("reference file");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("reference line"))
        .collect()
}

/// A classifier per bundle, loaded once for the whole test binary.
pub fn classifier(dir: PathBuf) -> &'static Mutex<Classifier> {
    static TINY: OnceLock<Mutex<Classifier>> = OnceLock::new();
    static FP32: OnceLock<Mutex<Classifier>> = OnceLock::new();
    static INT8: OnceLock<Mutex<Classifier>> = OnceLock::new();
    let cell = if dir == tiny_dir() {
        &TINY
    } else if dir == int8_dir() {
        &INT8
    } else {
        &FP32
    };
    cell.get_or_init(|| Mutex::new(Classifier::from_dir(&dir).expect("load bundle")))
}

/// Copies a bundle into a fresh temporary directory, to damage it.
pub fn copy_bundle(dir: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

/// A command for the `edge-bert` binary built with this test binary.
///
/// When the tests are cross-built and run under qemu-user (`cross/test.sh`),
/// `EDGE_BERT_TEST_RUNNER` holds the emulator prefix, for example
/// `qemu-aarch64 -L /usr/aarch64-linux-gnu`: without binfmt_misc the kernel
/// cannot exec an ARM binary spawned by a test, so the test runs it through
/// the emulator.
///
/// `EDGE_BERT_TEST_BIN` runs the tests against another build of the binary
/// instead (for example an older main's, to show which tests fail there).
pub fn edge_bert() -> Command {
    let bin = bin();
    match std::env::var("EDGE_BERT_TEST_RUNNER") {
        Ok(r) if !r.trim().is_empty() => {
            let mut words = r.split_whitespace();
            let mut cmd = Command::new(words.next().unwrap());
            cmd.args(words).arg(bin);
            cmd
        }
        _ => Command::new(bin),
    }
}

/// The binary under test: `EDGE_BERT_TEST_BIN`, else the one cargo built.
pub fn bin() -> String {
    std::env::var("EDGE_BERT_TEST_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_edge-bert").to_string())
}

/// True when the tests run under an emulator (see [`edge_bert`]).
pub fn emulated() -> bool {
    std::env::var("EDGE_BERT_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty())
}

/// Runs the `edge-bert` binary with `args`, feeding `stdin`.
pub fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = edge_bert()
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn edge-bert");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // Fed from a thread while the output is read, so a child that writes
    // more than a pipe's worth before it has read all of its input cannot
    // deadlock the test. A child that exits before reading all of its
    // input (a refused model, say) closes the pipe: its exit code and
    // stderr then tell the test why.
    let feeder = std::thread::spawn(move || match input.write_all(&stdin) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a run failed with `code`, no panic, and a message containing `needle`.
pub fn assert_fails(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
}

/// Runs `cmd` (its stdin empty), killing it after `limit`; the output and
/// whether it had to be killed. Its address space is capped at 8 GiB, so
/// a run that would read without end fails instead of taking the machine.
pub fn run_limited(mut cmd: Command, limit: std::time::Duration) -> (Output, bool) {
    use std::os::unix::process::CommandExt;
    // 8 GiB, or all a 32-bit rlim_t holds.
    let limit_as = "8589934592"
        .parse::<libc::rlim_t>()
        .unwrap_or(libc::rlim_t::MAX);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            let cap = libc::rlimit {
                rlim_cur: limit_as,
                rlim_max: limit_as,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &cap) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn edge-bert");
    let deadline = std::time::Instant::now() + limit;
    let mut killed = false;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            killed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), killed)
}

/// True when the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command for the `edge-bert` binary run as `uid` (group `uid`, no
/// supplementary groups): for tests that need a process without root's
/// powers (permission checks, task limits) when the tests run as root.
/// The binary is copied once into a directory every user can read.
/// `None` when not root or under an emulator.
pub fn edge_bert_as(uid: u32) -> Option<Command> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !is_root() || emulated() {
        return None;
    }
    static COPY: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, bin) = COPY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("edge-bert");
        std::fs::copy(self::bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, bin)
    });
    let mut cmd = Command::new(bin);
    cmd.uid(uid).gid(uid);
    Some(cmd)
}

/// A temporary directory every user may write in (for a server run by
/// [`edge_bert_as`]).
pub fn shared_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}
