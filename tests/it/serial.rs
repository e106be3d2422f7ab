//! `edge-bert serve --serial` over real pseudo-terminals. The server opens
//! the pty's device side (through a symlink standing in for `/dev/ttyUSB0`);
//! the test holds the other side and is the wire: it can damage frames,
//! inject noise, and pull the cable (close the pty) and plug it back (a new
//! pty at the same path).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edge_bert_wire::frame as framing;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
use serde_json::{json, Value};

use crate::serve::Server;
use crate::util::*;

/// The test's end of a pty whose device end is linked at `link`.
struct Wire {
    master: File,
    pending: Vec<u8>,
}

impl Wire {
    /// A new pty, its device side set raw and linked at `link`.
    fn plug(link: &Path) -> Wire {
        // CLOEXEC: servers spawned by other tests must not inherit this end,
        // or closing it here would not hang up the line.
        let m = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        grantpt(&m).unwrap();
        unlockpt(&m).unwrap();
        let name = PathBuf::from(ptsname(&m, Vec::new()).unwrap().into_string().unwrap());
        // Raw from the start, so nothing is echoed before the server opens it.
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&name)
            .unwrap();
        let mut t = tcgetattr(&dev).unwrap();
        t.make_raw();
        tcsetattr(&dev, OptionalActions::Now, &t).unwrap();
        drop(dev);
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&name, link).unwrap();
        Wire {
            master: File::from(m),
            pending: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    /// A checked frame: body, suffix, newline.
    fn frame(body: &Value) -> Vec<u8> {
        let mut f = body.to_string().into_bytes();
        framing::seal(&mut f);
        f.push(b'\n');
        f
    }

    /// Reads bytes that are there within `timeout` (none if the device end
    /// is not open yet).
    fn fill(&mut self, timeout: Duration) -> bool {
        let ts = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(&self.master, PollFlags::IN)];
        if poll(&mut fds, Some(&ts)).unwrap() == 0 {
            return false;
        }
        let mut buf = [0u8; 4096];
        match self.master.read(&mut buf) {
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                n > 0
            }
            // EIO: no one has the device side open (yet).
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                false
            }
        }
    }

    /// The next reply line (without its newline).
    fn line(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
                let line = self.pending[..pos].to_vec();
                self.pending.drain(..=pos);
                return line;
            }
            assert!(Instant::now() < deadline, "no reply on the serial line");
            self.fill(Duration::from_millis(100));
        }
    }

    /// The next reply, which must carry a valid check.
    fn reply(&mut self) -> Value {
        let line = self.line();
        match framing::parse(&line) {
            framing::Frame::Checked(body) => serde_json::from_slice(body).unwrap(),
            other => panic!(
                "reply without a valid check ({other:?}): {}",
                String::from_utf8_lossy(&line)
            ),
        }
    }

    fn ask(&mut self, body: &Value) -> Value {
        self.send(&Wire::frame(body));
        self.reply()
    }
}

/// A server on a unix socket (for readiness and metrics) and a pty.
fn serve_serial(dir: tempfile::TempDir, link: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--serial", link.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start_at(dir, &args)
}

fn tiny_args() -> Vec<String> {
    vec!["--model".into(), tiny_dir().to_str().unwrap().into()]
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A tiny xorshift, so the damage is random but the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Damages a frame (not its newline) in one of three ways; the result
/// differs from the clean frame and contains no newline.
fn damage(rng: &mut Rng, frame: &[u8]) -> Vec<u8> {
    let body = &frame[..frame.len() - 1];
    let mut out = match rng.below(3) {
        0 => {
            // Flip 1-3 bits, never making a newline.
            let mut b = body.to_vec();
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(b.len());
                let flipped = b[i] ^ (1 << rng.below(8));
                if flipped != b'\n' {
                    b[i] = flipped;
                }
            }
            b
        }
        1 => {
            // Drop 1-4 bytes.
            let mut b = body.to_vec();
            let at = rng.below(b.len());
            b.drain(at..(at + 1 + rng.below(4)).min(body.len()));
            b
        }
        _ => body[..1 + rng.below(body.len() - 1)].to_vec(),
    };
    if out == body {
        out.pop();
    }
    out.push(b'\n');
    out
}

#[test]
fn serial_client_matches_in_process_and_resends_a_damaged_frame() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("ttyDEV");
    let host = dir.path().join("ttyHOST");
    let mut a = Wire::plug(&dev);
    let mut b = Wire::plug(&host);
    let server = serve_serial(dir, &dev, &[]);
    // The null-modem cable: copy bytes both ways between the two ptys.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cable = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // It damages one byte on the way to the device: the first byte
            // of the first text frame (after the hello's two newlines and
            // the text frame's leading one), so the client must resend.
            let mut newlines = 0;
            let mut damaged = false;
            let carry =
                |from: &mut Wire, to: &mut File, damage: Option<(&mut usize, &mut bool)>| {
                    from.fill(Duration::from_millis(5));
                    if let Some((newlines, damaged)) = damage {
                        for byte in from.pending.iter_mut() {
                            if *newlines == 3 && !*damaged {
                                *byte ^= 0x01;
                                *damaged = true;
                            }
                            if *byte == b'\n' {
                                *newlines += 1;
                            }
                        }
                    }
                    if !from.pending.is_empty() {
                        to.write_all(&from.pending).unwrap();
                        from.pending.clear();
                    }
                };
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                carry(&mut a, &mut b.master, None);
                carry(&mut b, &mut a.master, Some((&mut newlines, &mut damaged)));
            }
            damaged
        })
    };
    let texts = [
        "a gorgeous, moving and beautifully acted film",
        "what a waste of two hours",
        "éclairs, 東京 and 🎬: oddly watchable",
    ];
    let mut args = vec!["classify", "--json", "--serial", host.to_str().unwrap()];
    args.extend(texts);
    let remote = run(&args, b"");
    assert!(remote.status.success(), "{}", stderr(&remote));
    let mut local_args = vec!["classify", "--json"];
    local_args.extend(texts);
    let local = run(&local_args, b"");
    assert!(local.status.success(), "{}", stderr(&local));
    let parse = |s: String| -> Vec<Value> {
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (remote, local) = (parse(stdout(&remote)), parse(stdout(&local)));
    assert_eq!(remote.len(), texts.len());
    for (r, l) in remote.iter().zip(&local) {
        assert_eq!(r["label"], l["label"]);
        assert_eq!(r["tokens"], l["tokens"]);
        assert_eq!(r["text"], l["text"]);
        let (rs, ls) = (r["score"].as_f64().unwrap(), l["score"].as_f64().unwrap());
        assert!((rs - ls).abs() < 1e-6, "{rs} vs {ls}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(cable.join().unwrap(), "the cable never damaged a frame");
    // The damaged frame was reported and resent.
    let mut conn = server.connect();
    let m = conn.ask(br#"{"op":"metrics"}"#);
    assert!(m["metrics"]["errors"].as_u64().unwrap() >= 1, "{m}");
    drop(server);
}

#[test]
fn serial_bad_baud_and_missing_device_are_clear_errors() {
    let o = run(
        &["classify", "--serial", "/dev/null", "--baud", "12345", "hi"],
        b"",
    );
    assert_fails(&o, 2, "unsupported --baud 12345");
    let o = run(&["classify", "--serial", "/nonexistent/ttyX", "hi"], b"");
    assert_fails(
        &o,
        5,
        "cannot reach the server on serial port /nonexistent/ttyX",
    );
    let tiny = tiny_dir();
    let o = run(
        &[
            "serve",
            "--model",
            tiny.to_str().unwrap(),
            "--serial",
            "/dev/null",
            "--baud",
            "7",
        ],
        b"",
    );
    assert_fails(&o, 2, "unsupported --baud 7");
}

#[test]
fn corrupted_frames_are_reported_and_the_link_resynchronises() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("ttyDEV");
    let mut wire = Wire::plug(&dev);
    let tiny = tiny_args();
    let _server = serve_serial(dir, &dev, &[&tiny[0], &tiny[1]]);
    let ok = wire.ask(&json!({"id": 0, "op": "health"}));
    assert_eq!(ok["status"], "ok");
    // Model reloads are for the Unix socket only.
    let r = wire.ask(&json!({"id": 1, "op": "reload"}));
    assert_eq!(code(&r), "forbidden", "{r}");

    let clean = Wire::frame(&json!({"id": 1, "text": "a fine film"}));
    let body = &clean[..clean.len() - 1];
    let mut flipped = body.to_vec();
    flipped[10] ^= 0x04;
    let mut dropped = body.to_vec();
    dropped.remove(14);
    let truncated = body[..body.len() - 12].to_vec();
    let mut bad_suffix = body.to_vec();
    let n = bad_suffix.len();
    bad_suffix[n - 1] = if bad_suffix[n - 1] == b'0' {
        b'1'
    } else {
        b'0'
    };
    let unchecked = br#"{"id":1,"text":"a fine film"}"#.to_vec();
    for (what, mut frame) in [
        ("flipped bit", flipped),
        ("dropped byte", dropped),
        ("truncated", truncated),
        ("bad suffix", bad_suffix),
        ("no suffix on a checked link", unchecked),
    ] {
        frame.push(b'\n');
        wire.send(&frame);
        let r = wire.reply();
        assert_eq!(code(&r), "corrupt", "{what}: {r}");
        assert!(r["id"].is_null(), "{what}: {r}");
        // The next clean frame is answered.
        let r = wire.ask(&json!({"id": 2, "text": "a fine film"}));
        assert_eq!(r["id"], 2, "{what}: {r}");
        assert!(r["label"].is_string(), "{what}: {r}");
    }
    // Malformed JSON with a valid check is a protocol error, not damage.
    let mut f = b"{not json".to_vec();
    framing::seal(&mut f);
    f.push(b'\n');
    wire.send(&f);
    assert_eq!(code(&wire.reply()), "malformed_json");
}

#[test]
fn noise_garbage_and_overlong_lines_do_not_wedge_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("ttyDEV");
    let mut wire = Wire::plug(&dev);
    let tiny = tiny_args();
    let server = serve_serial(dir, &dev, &[&tiny[0], &tiny[1], "--max-text-bytes", "1000"]);
    let pid = server.pid();
    assert_eq!(wire.ask(&json!({"id": 0, "op": "health"}))["status"], "ok");
    let mut rng = Rng(0x5eed);

    // Noise between frames: the client's leading newline ends it, the noise
    // gets a corrupt reply (or none if blank), the frame its answer.
    for i in 0..20 {
        let noise: Vec<u8> = (0..1 + rng.below(200)).map(|_| rng.next() as u8).collect();
        wire.send(&noise);
        wire.send(b"\n");
        wire.send(&Wire::frame(&json!({"id": 100 + i, "text": "noisy line"})));
        loop {
            let line = wire.line();
            if let framing::Frame::Checked(body) = framing::parse(&line) {
                let v: Value = serde_json::from_slice(body).unwrap();
                if v["id"] == json!(100 + i) {
                    assert!(v["label"].is_string(), "{v}");
                    break;
                }
                assert!(
                    ["corrupt", "too_long"].contains(&code(&v)),
                    "noise answered with {v}"
                );
            }
        }
    }

    // 64 KiB of garbage, four times over; memory must not grow with it.
    let before = rss_kib(pid);
    for round in 0..4 {
        let mut burst: Vec<u8> = (0..64 * 1024).map(|_| rng.next() as u8).collect();
        burst.push(b'\n');
        burst.extend(Wire::frame(
            &json!({"id": round, "text": "after the burst"}),
        ));
        // Written from a second thread while this one reads the replies to
        // the garbage's lines, so neither side of the pty fills up.
        let mut w = wire.master.try_clone().unwrap();
        let writer = std::thread::spawn(move || w.write_all(&burst).unwrap());
        let mut r = wire.reply();
        while r["id"] != round {
            assert!(["corrupt", "too_long"].contains(&code(&r)), "{r}");
            r = wire.reply();
        }
        assert!(r["label"].is_string(), "{r}");
        writer.join().unwrap();
    }
    let after = rss_kib(pid);
    assert!(
        after <= before + 1024,
        "RSS grew from {before} KiB to {after} KiB after 256 KiB of garbage"
    );

    // An over-long line is refused without being buffered; the next works.
    let mut long = b"{\"id\":9,\"text\":\"".to_vec();
    long.extend(std::iter::repeat_n(b'x', 50_000));
    long.extend_from_slice(b"\"}");
    framing::seal(&mut long);
    long.push(b'\n');
    wire.send(&long);
    assert_eq!(code(&wire.reply()), "too_long");
    assert_eq!(wire.ask(&json!({"id": 10, "text": "short"}))["id"], 10);
}

#[test]
fn pulling_and_replugging_the_cable_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("ttyDEV");
    let mut wire = Wire::plug(&dev);
    let tiny = tiny_args();
    let mut server = serve_serial(dir, &dev, &[&tiny[0], &tiny[1]]);
    assert_eq!(wire.ask(&json!({"id": 1, "text": "before"}))["id"], 1);
    for round in 0..3 {
        // Unplug: the device side hangs up and its path goes away.
        drop(wire);
        std::fs::remove_file(&dev).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        // Plug back in, at the same path.
        wire = Wire::plug(&dev);
        let r = wire.ask(&json!({"id": 10 + round, "text": "after"}));
        assert_eq!(r["id"], 10 + round, "{r}");
        assert!(r["label"].is_string(), "{r}");
    }
    // The socket side never noticed.
    let mut conn = server.connect();
    assert_eq!(conn.ask(br#"{"op":"health"}"#)["status"], "ok");
    let log = server.stop();
    assert!(log.contains("lost") && log.contains("reopening"), "{log}");
}

#[test]
fn soak_2000_frames_with_5_percent_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("ttyDEV");
    let mut wire = Wire::plug(&dev);
    let tiny = tiny_args();
    let _server = serve_serial(dir, &dev, &[&tiny[0], &tiny[1]]);
    assert_eq!(wire.ask(&json!({"id": 0, "op": "health"}))["status"], "ok");
    let (texts, expected): (Vec<String>, Vec<_>) = {
        let mut clf = classifier(tiny_dir()).lock().unwrap();
        let labels = clf.manifest().labels.clone();
        edge_bert_model::eval::read_tsv(&tiny_dir().join("test.tsv"), &labels)
            .unwrap()
            .into_iter()
            .map(|e| {
                let c = clf.classify(&e.text).unwrap();
                (e.text, c)
            })
            .unzip()
    };
    let mut rng = Rng(2000);
    let (mut clean, mut damaged) = (0, 0);
    for i in 0..2000usize {
        let k = i % texts.len();
        let frame = Wire::frame(&json!({"id": i, "text": texts[k]}));
        if rng.below(100) < 5 {
            damaged += 1;
            wire.send(&damage(&mut rng, &frame));
            let r = wire.reply();
            assert_eq!(code(&r), "corrupt", "frame {i}: {r}");
        } else {
            clean += 1;
            wire.send(&frame);
            let r = wire.reply();
            assert_eq!(r["id"], i, "frame {i}: {r}");
            assert_eq!(r["label"], expected[k].label.as_str(), "frame {i}");
            let score = r["score"].as_f64().unwrap();
            assert!((score - expected[k].score as f64).abs() < 1e-6, "frame {i}");
        }
    }
    eprintln!("soak: {clean} clean frames answered, {damaged} damaged frames reported corrupt");
    assert!(
        damaged > 50 && clean > 1800,
        "{clean} clean, {damaged} damaged"
    );
}

/// A trailing `\r` does not count towards `--max-text-bytes` on a serial
/// line either (issue 21, item 11), with or without the check suffix.
#[test]
fn a_trailing_cr_does_not_count_towards_the_serial_line_limit() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("ttyDEV");
    let mut wire = Wire::plug(&dev);
    let tiny = tiny_args();
    let _server = serve_serial(dir, &dev, &[&tiny[0], &tiny[1], "--max-text-bytes", "64"]);
    let body = |n: usize| {
        let head = "{\"text\": \"";
        format!("{head}{}\"}}", "a".repeat(n - head.len() - 2))
    };
    assert_eq!(body(64).len(), 64);
    // Unchecked: a serial line may be as long as a checked one (the limit
    // plus the 9-byte suffix); that many bytes and "\r\n" fit, one more
    // does not.
    wire.send(format!("{}\r\n", body(73)).as_bytes());
    let r: Value = serde_json::from_slice(&wire.line()).unwrap();
    assert!(r["label"].is_string(), "{r}");
    wire.send(format!("{}\r\n", body(74)).as_bytes());
    let r: Value = serde_json::from_slice(&wire.line()).unwrap();
    assert_eq!(code(&r), "too_long", "{r}");
    // Checked: 64 bytes, the suffix and "\r\n" fit.
    let mut f = body(64).into_bytes();
    framing::seal(&mut f);
    f.extend_from_slice(b"\r\n");
    wire.send(&f);
    assert!(wire.reply()["label"].is_string());
}

/// Issue 21, item 14: 64 KiB of line noise reach the server before the
/// client opens the port; the server's replies to the noise wait on the
/// client's side of the cable. `classify --serial` must skip them (flush
/// what is stale, match its replies by id) and answer as in-process does,
/// on the default model.
#[test]
fn the_serial_client_works_after_64_kib_of_line_noise() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("ttyDEV");
    let host = dir.path().join("ttyHOST");
    let mut a = Wire::plug(&dev);
    let mut b = Wire::plug(&host);
    // A UART drops what nobody reads: the host side's cable end does not
    // block when its buffer is full (no client has the port open yet).
    // SAFETY: fcntl on an open descriptor.
    unsafe {
        use std::os::fd::AsRawFd;
        let fd = b.master.as_raw_fd();
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        );
    }
    let server = serve_serial(dir, &dev, &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noise_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cable = {
        let (stop, noise_done) = (stop.clone(), noise_done.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let noise: Vec<u8> = (0..64 * 1024).map(|_| rng.next() as u8).collect();
            let mut carried = 0usize;
            let mut sent = 0;
            let mut quiet = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // The noise goes to the server in 1 KiB pieces, between
                // carrying its replies to the host side.
                if sent < noise.len() {
                    let end = (sent + 1024).min(noise.len());
                    a.master.write_all(&noise[sent..end]).unwrap();
                    sent = end;
                }
                a.fill(Duration::from_millis(5));
                if !a.pending.is_empty() {
                    // What does not fit is dropped, as on a real line.
                    carried += b.master.write(&a.pending).unwrap_or(0);
                    a.pending.clear();
                    quiet = Instant::now();
                }
                b.fill(Duration::from_millis(5));
                if !b.pending.is_empty() {
                    a.master.write_all(&b.pending).unwrap();
                    b.pending.clear();
                }
                if sent == noise.len() && quiet.elapsed() > Duration::from_millis(500) {
                    noise_done.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            carried
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !noise_done.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the server never went quiet");
        std::thread::sleep(Duration::from_millis(50));
    }
    let texts = ["a gorgeous, moving film", "a dull, lifeless mess"];
    let mut args = vec!["classify", "--json", "--serial", host.to_str().unwrap()];
    args.extend(texts);
    let remote = run(&args, b"");
    let mut local_args = vec!["classify", "--json"];
    local_args.extend(texts);
    let local = run(&local_args, b"");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let carried = cable.join().unwrap();
    assert!(remote.status.success(), "{}", stderr(&remote));
    assert!(local.status.success(), "{}", stderr(&local));
    let labels = |o: &std::process::Output| -> Vec<Value> {
        stdout(o)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["label"].clone())
            .collect()
    };
    assert_eq!(labels(&remote), labels(&local));
    // The noise was answered (that is what lay in wait for the client).
    let m = server.connect().ask(br#"{"op":"metrics"}"#);
    let errors = m["metrics"]["errors"].as_u64().unwrap();
    assert!(errors >= 100, "{m}");
    eprintln!("64 KiB of noise: {errors} error replies; {carried} bytes carried to the host side; the client answered as in-process");
}

/// The NER model made by the recipe over a serial line: checked frames are
/// answered with the entities `classify --model` finds in-process, and a
/// damaged frame is `corrupt` without losing the link.
#[test]
fn an_ner_model_answers_entities_over_the_serial_line() {
    let refs = crate::ner::references();
    let texts: Vec<&str> = refs
        .iter()
        .take(4)
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    let bundle = crate::ner::bundle();
    let local = crate::ner::classify_json(&["--model", bundle.to_str().unwrap()], &texts);
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("ttyDEV");
    let mut wire = Wire::plug(&dev);
    let _server = serve_serial(dir, &dev, &["--model", bundle.to_str().unwrap()]);
    assert_eq!(wire.ask(&json!({"id": 0, "op": "health"}))["status"], "ok");
    for (i, (t, want)) in texts.iter().zip(&local).enumerate() {
        let r = wire.ask(&json!({"id": i, "text": t}));
        assert_eq!(r["id"], i, "{r}");
        assert_eq!(
            crate::ner::as_f32(&r["entities"]),
            crate::ner::as_f32(&want["entities"]),
            "{t}"
        );
    }
    let mut damaged = Wire::frame(&json!({"id": 9, "text": texts[0]}));
    damaged[12] ^= 0x02;
    wire.send(&damaged);
    assert_eq!(code(&wire.reply()), "corrupt");
    let r = wire.ask(&json!({"id": 10, "texts": [texts[0], texts[1]]}));
    assert_eq!(r["results"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(
        crate::ner::as_f32(&r["results"][1]["entities"]),
        crate::ner::as_f32(&local[1]["entities"])
    );
}
