//! Reliability of `edge-bert serve` and its clients (issue 21), each with
//! real sockets, real signals, real ptys or a real task limit: what is at
//! the socket path, restarts, a panicking worker or session, SIGHUP,
//! shutdown under load, start-up limits, hostile bundle files, echoed ids,
//! trailing `\r`, connection failures and a serial line full of noise.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::serve::{code, send_signal, Server};
use crate::util::*;

/// `serve --model tiny --socket PATH`, run to its end (at most 60 s).
fn serve_tiny_at(path: &Path, extra: &[&str]) -> (std::process::Output, bool) {
    let tiny = tiny_dir();
    let mut cmd = edge_bert();
    cmd.args(["serve", "--model", tiny.to_str().unwrap(), "--socket"])
        .arg(path)
        .args(extra);
    run_limited(cmd, Duration::from_secs(60))
}

/// Item 1: a path that is not a socket is never removed, whatever it is.
#[test]
fn a_socket_path_that_is_not_a_socket_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    std::fs::write(&file, "root:x:0:0\n").unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let sub = dir.path().join("dir");
    std::fs::create_dir(&sub).unwrap();
    let mut cases = vec![
        (file.clone(), "a regular file"),
        (fifo, "a FIFO"),
        (link.clone(), "a symbolic link"),
        (sub, "a directory"),
    ];
    // A device node (root only): a copy of /dev/null's numbers.
    let dev = dir.path().join("null");
    let c = std::ffi::CString::new(dev.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string path.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) } == 0 {
        cases.push((dev, "a device node"));
    }
    for (path, kind) in cases {
        let before = std::fs::symlink_metadata(&path).unwrap();
        let (o, killed) = serve_tiny_at(&path, &[]);
        assert!(!killed, "serve --socket {} did not stop", path.display());
        assert_fails(&o, 2, &format!("is not a socket ({kind})"));
        let after = std::fs::symlink_metadata(&path).expect("the path was removed");
        assert_eq!(
            (before.ino(), before.file_type()),
            (after.ino(), after.file_type())
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "root:x:0:0\n");
    assert_eq!(std::fs::read_link(&link).unwrap(), file);
}

/// Item 3: a live server's socket that this user may not connect to is
/// not stale. Run as an unprivileged user (root connects anywhere).
#[test]
fn permission_denied_on_connect_is_not_taken_as_stale() {
    let dir = shared_tempdir();
    let path = dir.path().join("eb.sock");
    // The live server: a listener held by this test, its socket closed to
    // everyone else.
    let live = UnixListener::bind(&path).unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = match edge_bert_as(64_021) {
        Some(cmd) => cmd,
        // Not root: this user is already refused by mode 000.
        None => edge_bert(),
    };
    cmd.args(["serve", "--socket"]).arg(&path);
    let (o, killed) = run_limited(cmd, Duration::from_secs(120));
    assert!(!killed, "serve did not stop");
    assert_fails(&o, 2, "cannot tell whether a server is listening");
    assert!(stderr(&o).contains("ermission denied"), "{}", stderr(&o));
    // The live server's socket is still there, still its own.
    assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), ino);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
    let _c = UnixStream::connect(&path).unwrap();
    assert!(live.accept().is_ok());
}

/// Item 2: a server stopping while a new one starts on the same path
/// removes only its own socket: the new server stays reachable.
#[test]
fn a_stopping_server_never_removes_its_successor_socket() {
    let mut a = Server::tiny(&[]);
    let path = a.socket.clone();
    // A client that keeps the old server draining for 3 s after SIGTERM.
    let mut c = a.connect();
    let feeder = std::thread::spawn(move || {
        let started = Instant::now();
        let mut answered = 0;
        let mut i = 0;
        while started.elapsed() < Duration::from_secs(3) {
            c.send_raw(format!(r#"{{"id": {i}, "text": "still here {i}"}}"#).as_bytes());
            i += 1;
            match c.recv_line() {
                Some(_) => answered += 1,
                None => break,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (i, answered)
    });
    std::thread::sleep(Duration::from_millis(300));
    a.signal(15);
    // The successor starts at once on the same path.
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_dir();
    let mut cmd = edge_bert();
    cmd.args(["serve", "--model", tiny.to_str().unwrap(), "--socket"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped());
    let mut b = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while UnixStream::connect(&path).is_err() || a.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the successor never came up");
        assert!(b.try_wait().unwrap().is_none(), "the successor exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (sent, answered) = feeder.join().unwrap();
    assert_eq!(
        sent, answered,
        "the old server dropped lines while draining"
    );
    assert!(a.child.wait().unwrap().success());
    // The old server has exited: the path is still the successor's.
    let s = UnixStream::connect(&path).expect("the successor's socket was removed");
    let mut r = BufReader::new(s.try_clone().unwrap());
    (&s).write_all(b"{\"id\": 1, \"text\": \"fine\"}\n")
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"label\""), "{line}");
    send_signal(b.id(), 15);
    assert!(b.wait().unwrap().success());
    assert!(!path.exists());
    drop(dir);
}

/// Item 4: when no thread can be started for a connection (the task
/// limit), that connection is refused and the server goes on.
#[test]
fn a_failed_thread_spawn_refuses_the_connection_and_serving_goes_on() {
    let Some(cmd) = edge_bert_as(64_022) else {
        eprintln!("skipped: needs root, to run the server as a user of its own under a task limit");
        return;
    };
    let threads = |pid: u32| -> libc::rlim_t {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    // How many tasks a server idles with (the readiness probe's client
    // thread gone).
    let idle = {
        let server = Server::start_with(shared_tempdir(), &[], cmd);
        std::thread::sleep(Duration::from_millis(500));
        threads(server.pid())
    };
    // Started again with room for two more tasks (the kernel's count is
    // not exactly the threads /proc shows): a client thread or two fit,
    // the next does not. The user has no other process.
    let mut cmd = edge_bert_as(64_022).unwrap();
    let n = idle + 2;
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            let cap = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &cap) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = Server::start_with(shared_tempdir(), &[], cmd);
    // Wait for the readiness probe's thread to end.
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads(server.pid()) > idle {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Clients held open until one is refused.
    let mut held = Vec::new();
    let refusal = loop {
        let mut c = server.connect();
        let v = c.ask(br#"{"text": "one"}"#);
        if !v["label"].is_string() {
            break v;
        }
        held.push(c);
        assert!(
            held.len() < 8,
            "no connection was refused under task limit {n}"
        );
    };
    assert_eq!(code(&refusal), "busy", "{refusal}");
    assert!(
        !held.is_empty(),
        "no client was served under task limit {n}"
    );
    let mut refused = 1;
    for _ in 0..3 {
        let v = server.connect().recv();
        assert_eq!(code(&v), "busy", "{v}");
        refused += 1;
    }
    let served = held.len();
    let mut first = held.remove(0);
    drop(held);
    // Still serving the first client, and a new one once it has gone.
    assert!(first.ask(br#"{"text": "two"}"#)["label"].is_string());
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = server.connect();
        let v = c.ask(br#"{"text": "three"}"#);
        if v["label"].is_string() {
            break;
        }
        assert_eq!(code(&v), "busy", "{v}");
        assert!(Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("task limit {n}: {served} clients served, {refused} connections refused with busy, serving went on");
}

/// Item 5: a panic in the inference worker is answered `internal`,
/// `health` says so, and the server stops with exit 1 (for systemd to
/// restart it) after answering every accepted line.
#[test]
fn a_panicking_worker_answers_internal_reports_it_and_exits_1() {
    let mut cmd = edge_bert();
    cmd.env("EDGE_BERT_FAULT", "worker-panic:boom");
    let mut server = Server::start_with(tempfile::tempdir().unwrap(), &[], cmd);
    let mut c = server.connect();
    let mut batch = String::new();
    for i in 0..20 {
        batch.push_str(&format!("{{\"id\": {i}, \"text\": \"a fine film {i}\"}}\n"));
    }
    batch.push_str("{\"id\": \"b\", \"text\": \"boom\"}\n{\"id\": \"h\", \"op\": \"health\"}\n");
    for i in 20..40 {
        batch.push_str(&format!("{{\"id\": {i}, \"text\": \"a fine film {i}\"}}\n"));
    }
    c.writer.write_all(batch.as_bytes()).unwrap();
    let mut replies = Vec::new();
    while let Some(line) = c.recv_line() {
        replies.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    assert_eq!(replies.len(), 42, "{replies:?}");
    for r in &replies[..20] {
        assert!(r["label"].is_string(), "{r}");
    }
    assert_eq!(replies[20]["id"], "b");
    assert_eq!(code(&replies[20]), "internal", "{}", replies[20]);
    assert_eq!(replies[21]["status"], "failing", "{}", replies[21]);
    for r in &replies[22..] {
        assert!(matches!(code(r), "internal" | "shutting_down"), "{r}");
    }
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{status}");
    assert!(!server.socket.exists());
}

/// Item 5: a panicking session gives its `--max-clients` place back.
#[test]
fn a_panicking_session_gives_its_client_place_back() {
    let mut cmd = edge_bert();
    cmd.env("EDGE_BERT_FAULT", "session-panic:boom");
    let tiny = tiny_dir();
    let args = ["--model", tiny.to_str().unwrap(), "--max-clients", "1"];
    let server = Server::start_with(tempfile::tempdir().unwrap(), &args, cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        let mut c = server.connect();
        let v = c.ask(br#"{"text": "fine"}"#);
        if v["label"].is_string() {
            break c;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    };
    c.send_raw(br#"{"text": "boom"}"#);
    assert_eq!(c.recv_line(), None, "the panicking session answered");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = server.connect().ask(br#"{"text": "after"}"#);
        if v["label"].is_string() {
            break;
        }
        assert_eq!(code(&v), "too_many_clients", "{v}");
        assert!(Instant::now() < deadline, "the place was never given back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Item 6: SIGHUP is logged and ignored; the server goes on serving and
/// still stops cleanly on SIGTERM.
#[test]
fn sighup_is_logged_and_serving_goes_on() {
    let tiny = tiny_dir();
    let args = ["--model", tiny.to_str().unwrap(), "-v"];
    let mut server = Server::start_with(tempfile::tempdir().unwrap(), &args, edge_bert());
    let mut c = server.connect();
    for _ in 0..3 {
        server.signal(1);
        std::thread::sleep(Duration::from_millis(100));
        assert!(c.ask(br#"{"text": "still serving"}"#)["label"].is_string());
    }
    assert!(server.child.try_wait().unwrap().is_none());
    drop(c);
    let log = server.stop();
    assert!(log.contains("SIGHUP"), "{log}");
    assert!(!server.socket.exists());
}

/// One client's pipelined run: the lines it wrote, and every reply.
fn pipeline(mut c: crate::serve::Conn, lines: Vec<String>) -> (usize, Vec<Value>) {
    let mut writer = c.writer.try_clone().unwrap();
    let w = std::thread::spawn(move || {
        let mut written = 0;
        for l in &lines {
            if writer.write_all(l.as_bytes()).is_err() {
                break;
            }
            written += 1;
        }
        written
    });
    let mut replies = Vec::new();
    while let Some(line) = c.recv_line() {
        replies.push(serde_json::from_str::<Value>(&line).expect("a JSON reply"));
    }
    (w.join().unwrap(), replies)
}

/// Checks one client's replies: one per line written, in order, each a
/// result or `shutting_down`; returns how many were `shutting_down`.
fn check_replies(tag: &str, written: usize, replies: &[Value]) -> usize {
    assert_eq!(
        replies.len(),
        written,
        "{tag}: {written} lines written, {} answered",
        replies.len()
    );
    let mut stopping = 0;
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["id"], json!(format!("{tag}-{i}")), "{r}");
        if code(r) == "shutting_down" {
            stopping += 1;
        } else {
            assert!(r["label"].is_string(), "{r}");
        }
    }
    stopping
}

fn lines_for(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{{\"id\": \"{tag}-{i}\", \"text\": \"line {i} of a long pipelined stream, {tag}\"}}\n"))
        .collect()
}

/// Item 7: 4 clients x 3,000 pipelined lines, SIGTERM after 2 s: every
/// line gets an answer, a result or `shutting_down`.
#[test]
fn every_accepted_line_is_answered_across_shutdown() {
    let mut server = Server::start(&[]);
    let clients: Vec<_> = (0..4)
        .map(|k| {
            let c = server.connect();
            let tag = format!("c{k}");
            std::thread::spawn(move || {
                let (written, replies) = pipeline(c, lines_for(&tag, 3000));
                (tag, written, replies)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    server.signal(15);
    let (mut ran, mut stopping) = (0, 0);
    for h in clients {
        let (tag, written, replies) = h.join().unwrap();
        assert_eq!(written, 3000, "{tag}: the server stopped reading");
        let s = check_replies(&tag, written, &replies);
        stopping += s;
        ran += replies.len() - s;
    }
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
    eprintln!("12000 lines: {ran} run, {stopping} answered shutting_down, 0 lost");
}

/// Item 8: every limit is checked at start-up, with its range.
#[test]
fn out_of_range_limits_are_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eb.sock");
    let cases: [(&[&str], &str); 6] = [
        (
            &["--max-text-bytes", "100000000000"],
            "--max-text-bytes 100000000000 is out of range: allowed 32..=1048576",
        ),
        (
            &["--max-text-bytes", "18446744073709551615"],
            "allowed 32..=1048576",
        ),
        (
            &["--max-text-bytes", "0"],
            "--max-text-bytes 0 is out of range",
        ),
        (
            &["--max-clients", "0"],
            "--max-clients 0 is out of range: allowed 1..=4096",
        ),
        (
            &["--queue", "0"],
            "--queue 0 is out of range: allowed 1..=65536",
        ),
        (
            &["--idle-timeout", "0"],
            "--idle-timeout 0 is out of range: allowed 1..=604800",
        ),
    ];
    for (args, want) in cases {
        let started = Instant::now();
        let (o, killed) = serve_tiny_at(&path, args);
        assert!(!killed, "{args:?} was accepted");
        assert_fails(&o, 2, want);
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(!path.exists());
    }
    // The sessions' buffers count in the memory budget: 4096 clients of
    // 1 MiB lines need gigabytes.
    let (o, _) = serve_tiny_at(
        &path,
        &[
            "--max-clients",
            "4096",
            "--max-text-bytes",
            "1048576",
            "--memory-budget",
            "512",
        ],
    );
    assert_fails(&o, 3, "4096 sessions' buffers take up to");
    // The largest allowed line works end to end.
    let server = Server::tiny(&["--max-text-bytes", "1048576"]);
    let mut text = "word ".repeat(200_000);
    text.truncate(1_048_000);
    let v = server
        .connect()
        .ask(json!({ "text": text }).to_string().as_bytes());
    assert!(v["label"].is_string(), "{v}");
}

/// Item 9: a FIFO or a device as the model file is refused at once,
/// never read.
#[test]
fn a_fifo_or_device_as_model_file_is_refused_at_once() {
    for target in ["fifo", "/dev/zero", "dir"] {
        let bundle = copy_bundle(&tiny_dir());
        let model = bundle.path().join("model.onnx");
        std::fs::remove_file(&model).unwrap();
        let kind = match target {
            "fifo" => {
                let c = std::ffi::CString::new(model.to_str().unwrap()).unwrap();
                // SAFETY: a valid C string path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
                "a FIFO"
            }
            "dir" => {
                std::fs::create_dir(&model).unwrap();
                "a directory"
            }
            dev => {
                std::os::unix::fs::symlink(dev, &model).unwrap();
                "a device"
            }
        };
        for sub in ["classify", "serve"] {
            let mut cmd = edge_bert();
            cmd.args([sub, "--model", bundle.path().to_str().unwrap()]);
            if sub == "classify" {
                cmd.arg("a fine film");
            } else {
                cmd.arg("--socket").arg(bundle.path().join("eb.sock"));
            }
            let started = Instant::now();
            let (o, killed) = run_limited(cmd, Duration::from_secs(30));
            assert!(!killed, "{sub} with model.onnx -> {target} hung");
            assert_fails(&o, 3, &format!("{kind}, not a regular file"));
            assert!(started.elapsed() < Duration::from_secs(30));
        }
        assert!(std::fs::symlink_metadata(&model).is_ok());
        let _ = std::fs::metadata(&model).map(|m| m.file_type().is_fifo());
    }
}

/// Item 10: the id is echoed as sent, on results, errors and ops alike.
#[test]
fn ids_are_echoed_byte_for_byte() {
    let server = Server::tiny(&[]);
    let mut c = server.connect();
    let ids = [
        "1e400",
        "18446744073709551616",
        "-0.000000000000000000001",
        r#""\ud800""#,
        r#""caf\u00e9""#,
        r#"{"a": [1, 2.50]}"#,
    ];
    let bodies = [
        r#""text": "a fine film""#,
        r#""text": """#,
        r#""op": "health""#,
        r#""op": "info""#,
        r#""op": "metrics""#,
        r#""op": "nope""#,
        r#""texts": ["a", "b"]"#,
        r#""texts": []"#,
    ];
    for id in ids {
        for body in bodies {
            c.send_raw(format!("{{\"id\": {id}, {body}}}").as_bytes());
            let line = c.recv_line().unwrap();
            let head = format!("{{\"id\":{id},");
            assert!(line.starts_with(&head), "{id} / {body}: {line}");
            // The rest is one JSON object (serde_json reads no 1e400).
            let rest = format!("{{\"id\":null,{}", &line[head.len()..]);
            serde_json::from_str::<Value>(&rest).expect("a JSON reply");
        }
    }
}

/// Item 11: a trailing `\r` does not count towards `--max-text-bytes`.
#[test]
fn a_trailing_cr_does_not_count_towards_the_line_limit() {
    let server = Server::tiny(&["--max-text-bytes", "64"]);
    let mut c = server.connect();
    let line = |n: usize| {
        let head = "{\"text\": \"";
        format!("{head}{}\"}}", "a".repeat(n - head.len() - 2))
    };
    assert_eq!(line(64).len(), 64);
    c.writer
        .write_all(format!("{}\r\n", line(64)).as_bytes())
        .unwrap();
    let v = c.recv();
    assert!(v["label"].is_string(), "{v}");
    c.writer
        .write_all(format!("{}\r\n", line(65)).as_bytes())
        .unwrap();
    assert_eq!(code(&c.recv()), "too_long");
    c.writer
        .write_all(format!("{}\n", line(64)).as_bytes())
        .unwrap();
    assert!(c.recv()["label"].is_string());
}

/// Item 12: the manifest's output name must be an output of the model.
#[test]
fn a_manifest_output_the_model_lacks_is_refused_at_load() {
    let bundle = copy_bundle(&tiny_dir());
    let path = bundle.path().join("manifest.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["output"] = json!("nope");
    std::fs::write(&path, m.to_string()).unwrap();
    let o = run(
        &[
            "classify",
            "--model",
            bundle.path().to_str().unwrap(),
            "a film",
        ],
        b"",
    );
    assert_fails(
        &o,
        3,
        "output \"nope\" is not an output of model.onnx (it has: logits)",
    );
}

/// Item 13: a server that cannot be reached has its own exit code.
#[test]
fn an_unreachable_server_exits_5_and_says_what_failed() {
    let o = run(
        &["classify", "--socket", "/nonexistent/eb.sock", "a film"],
        b"",
    );
    assert_fails(
        &o,
        5,
        "cannot reach the server on unix socket /nonexistent/eb.sock: No such file",
    );
    // A stale socket: nobody listening.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eb.sock");
    drop(UnixListener::bind(&path).unwrap());
    let o = run(
        &["classify", "--socket", path.to_str().unwrap(), "a film"],
        b"",
    );
    assert_fails(&o, 5, "Connection refused");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let o = run(&["classify", "--tcp", &addr, "a film"], b"");
    assert_fails(&o, 5, &format!("cannot reach the server at tcp {addr}"));
}

/// The restart loop: 20 x (SIGTERM under 4 pipelined clients, a new
/// server started at once on the same path). Every accepted line is
/// answered, the socket is reachable after each restart, and no other
/// file is ever removed.
#[test]
fn restart_loop_20_times_under_4_pipelined_clients() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eb.sock");
    let keep = dir.path().join("keep.txt");
    std::fs::write(&keep, "not a socket").unwrap();
    let start = || {
        let mut cmd = edge_bert();
        cmd.args(["serve", "--socket"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    let ready = |child: &mut std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(s) = UnixStream::connect(&path) {
                let mut r = BufReader::new(s.try_clone().unwrap());
                (&s).write_all(b"{\"id\": \"probe\", \"text\": \"are you there\"}\n")
                    .unwrap();
                let mut line = String::new();
                if r.read_line(&mut line).is_ok() && line.contains("\"label\"") {
                    return;
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut log = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut log);
                panic!("the server exited ({status}): {log}");
            }
            assert!(Instant::now() < deadline, "the server never came up");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut current = start();
    ready(&mut current);
    let (mut lines, mut stopping) = (0, 0);
    let started = Instant::now();
    for round in 0..20 {
        let clients: Vec<_> = (0..4)
            .map(|k| {
                let s = UnixStream::connect(&path).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let c = crate::serve::Conn {
                    reader: BufReader::new(s.try_clone().unwrap()),
                    writer: s,
                };
                let tag = format!("r{round}c{k}");
                std::thread::spawn(move || {
                    let (written, replies) = pipeline(c, lines_for(&tag, 150));
                    (tag, written, replies)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        send_signal(current.id(), 15);
        // The old server removes its socket as soon as it sees the signal
        // (it then drains): until then a new one is rightly refused as
        // "already listening", which a loaded machine made visible (a 100
        // ms poll against the new process's start-up).
        let gone = Instant::now() + Duration::from_secs(10);
        while path.exists() && Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut next = start();
        for h in clients {
            let (tag, written, replies) = h.join().unwrap();
            stopping += check_replies(&tag, written, &replies);
            lines += written;
        }
        let status = current.wait().unwrap();
        assert!(status.success(), "round {round}: {status}");
        ready(&mut next);
        assert!(
            UnixStream::connect(&path).is_ok(),
            "round {round}: socket unreachable"
        );
        assert_eq!(std::fs::read_to_string(&keep).unwrap(), "not a socket");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        current = next;
    }
    send_signal(current.id(), 15);
    assert!(current.wait().unwrap().success());
    assert!(!path.exists());
    assert!(keep.exists());
    eprintln!(
        "20 restarts in {:.1?}: {lines} lines, all answered ({stopping} shutting_down), socket reachable after each",
        started.elapsed()
    );
}
