//! `edge-bert serve` against real sockets: a real server process, real
//! clients, bad input and faults.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::*;

/// A running server, killed on drop.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    pub(crate) fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Server::start_at(dir, extra)
    }

    pub(crate) fn start_at(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        Server::start_with(dir, extra, edge_bert())
    }

    /// A server run by `cmd` (an `edge-bert` command, perhaps with its
    /// environment or user changed), on `dir/eb.sock`.
    pub(crate) fn start_with(dir: tempfile::TempDir, extra: &[&str], mut cmd: Command) -> Server {
        let socket = dir.path().join("eb.sock");
        let mut args = vec!["serve", "--socket", socket.to_str().unwrap()];
        args.extend_from_slice(extra);
        let child = cmd
            .args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut s = Server {
            child,
            socket,
            _dir: dir,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        // Under qemu (cross/test.sh) loading the int8 model takes minutes.
        let limit = if emulated() { 1200 } else { 120 };
        let deadline = Instant::now() + Duration::from_secs(limit);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("server exited early with {status}: {err}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not come up");
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit status (which must be 0) and the log.
    pub(crate) fn stop(&mut self) -> String {
        self.signal(15);
        let status = self.child.wait().unwrap();
        let mut log = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        assert!(status.success(), "{status}: {log}");
        log
    }

    pub(crate) fn connect(&self) -> Conn {
        let s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    pub(crate) fn tiny(extra: &[&str]) -> Server {
        let tiny = tiny_dir();
        let mut args = vec!["--model", tiny.to_str().unwrap()];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    pub(crate) fn signal(&self, sig: i32) {
        send_signal(self.child.id(), sig);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn send_signal(pid: u32, sig: i32) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

pub(crate) struct Conn {
    pub(crate) reader: BufReader<UnixStream>,
    pub(crate) writer: UnixStream,
}

impl Conn {
    pub(crate) fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }

    /// The next reply line as sent (without its newline); None at end of
    /// input.
    pub(crate) fn recv_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches('\n').to_string()),
        }
    }

    pub(crate) fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap();
        assert!(n > 0, "connection closed");
        serde_json::from_str(&line).unwrap()
    }

    pub(crate) fn ask(&mut self, bytes: &[u8]) -> Value {
        self.send_raw(bytes);
        self.recv()
    }
}

pub(crate) fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn socket_client_matches_in_process_on_the_default_model() {
    let server = Server::start(&[]);
    let texts = ["a warm, witty, wonderful film", "tedious and far too long"];
    let sock = server.socket.to_str().unwrap();
    let remote = run(
        &["classify", "--json", "--socket", sock, texts[0], texts[1]],
        b"",
    );
    let local = run(&["classify", "--json", texts[0], texts[1]], b"");
    assert!(remote.status.success(), "{}", stderr(&remote));
    assert!(local.status.success(), "{}", stderr(&local));
    let strip = |o: &std::process::Output| -> Vec<Value> {
        stdout(o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(strip(&remote), strip(&local));
    let human = run(&["classify", "--socket", sock, texts[0]], b"");
    assert!(
        stdout(&human).starts_with("POSITIVE\t"),
        "{}",
        stdout(&human)
    );
}

#[test]
fn bad_lines_get_errors_and_the_connection_stays_usable() {
    let server = Server::tiny(&["--max-text-bytes", "256"]);
    let mut c = server.connect();
    let cases: [(&[u8], &str); 8] = [
        (b"not json", "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (b"{\"id\": 2}", "missing_text"),
        (b"{\"id\": 3, \"text\": 5}", "missing_text"),
        (b"{\"id\": 4, \"text\": \"  \"}", "empty_text"),
        (b"{\"text\": \"\xff\xfe\"}", "invalid_utf8"),
        (b"{\"op\": \"format-disk\"}", "unknown_op"),
        (b"", "malformed_json"),
    ];
    for (line, want) in cases {
        let v = c.ask(line);
        assert_eq!(code(&v), want, "{v}");
        let ok = c.ask(br#"{"id": "next", "text": "a good film"}"#);
        assert_eq!(ok["id"], "next", "{ok}");
        assert!(ok["label"].is_string(), "{ok}");
    }
    // Several texts in one request: one response with results in order.
    let v = c.ask(br#"{"id": "m", "texts": ["a lovely film", "x", "a dull film"]}"#);
    let single = c.ask(br#"{"text": "x"}"#);
    let results = v["results"].as_array().unwrap();
    assert_eq!(v["id"], "m");
    assert_eq!(results.len(), 3);
    assert_eq!(results[1]["score"], single["score"]);
    assert_eq!(code(&c.ask(br#"{"texts": ["ok", ""]}"#)), "empty_text");
    // The id is echoed on errors too.
    assert_eq!(c.ask(br#"{"id": [1], "text": ""}"#)["id"], json!([1]));
}

#[test]
fn overlong_line_is_refused_and_the_next_line_works() {
    let server = Server::tiny(&["--max-text-bytes", "1000"]);
    let mut c = server.connect();
    let mut huge = b"{\"id\": 1, \"text\": \"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 3_000_000));
    huge.extend(b"\"}");
    let v = c.ask(&huge);
    assert_eq!(code(&v), "too_long", "{v}");
    let v = c.ask(br#"{"id": 2, "text": "fine"}"#);
    assert_eq!(v["id"], 2);
    let m = c.ask(br#"{"op": "metrics"}"#);
    // 3 MB went through without being buffered.
    assert!(
        m["metrics"]["peak_rss_kib"].as_u64().unwrap() < 200_000,
        "{m}"
    );
}

#[test]
fn ops_health_info_metrics() {
    let server = Server::tiny(&[]);
    let mut c = server.connect();
    assert_eq!(c.ask(br#"{"op": "health"}"#)["status"], "ok");
    let info = c.ask(br#"{"id": 9, "op": "info"}"#);
    assert_eq!(info["id"], 9);
    assert_eq!(info["info"]["model"], "tiny");
    assert_eq!(info["info"]["buckets"], json!([8, 16, 32]));
    for _ in 0..5 {
        c.ask(br#"{"text": "x y z"}"#);
    }
    c.ask(b"junk");
    let m = c.ask(br#"{"op": "metrics"}"#)["metrics"].clone();
    assert_eq!(m["requests"], 5);
    assert_eq!(m["errors"], 1);
    assert!(m["latency_ms_p99"].as_f64().unwrap() >= m["latency_ms_p50"].as_f64().unwrap());
}

#[test]
fn idle_clients_are_closed_and_others_unaffected() {
    let server = Server::tiny(&["--idle-timeout", "1"]);
    let mut idle = server.connect();
    let mut busy = server.connect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1600) {
        assert!(busy.ask(br#"{"text": "still here"}"#)["label"].is_string());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(code(&idle.recv()), "idle_timeout");
    let mut rest = String::new();
    assert_eq!(idle.reader.read_line(&mut rest).unwrap(), 0, "not closed");
}

#[test]
fn too_many_clients_are_refused_without_harm() {
    let server = Server::tiny(&["--max-clients", "1"]);
    // The readiness probe's connection may hold the only place for a few
    // milliseconds after it closes; wait for it to be released.
    let mut first = loop {
        let mut c = server.connect();
        let r = c.ask(br#"{"text": "one"}"#);
        if r["label"].is_string() {
            break c;
        }
        assert_eq!(code(&r), "too_many_clients", "{r}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut second = server.connect();
    assert_eq!(code(&second.recv()), "too_many_clients");
    assert!(first.ask(br#"{"text": "two"}"#)["label"].is_string());
    // A client that vanishes mid-request frees its place.
    first.send_raw(br#"{"text": "never read"}"#);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = server.connect();
        let v = c.ask(br#"{"text": "three"}"#);
        if v["label"].is_string() {
            break;
        }
        assert_eq!(code(&v), "too_many_clients");
        assert!(Instant::now() < deadline, "place never freed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_answers_accepted_requests_and_removes_the_socket() {
    let mut server = Server::tiny(&[]);
    let mut c = server.connect();
    // Pipeline 200 requests, then ask the server to stop.
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.extend(format!("{{\"id\": {i}, \"text\": \"text number {i}\"}}\n").bytes());
    }
    c.writer.write_all(&batch).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    server.signal(15);
    let mut answered = 0;
    let mut line = String::new();
    while c.reader.read_line(&mut line).unwrap_or(0) > 0 {
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], answered, "{v}");
        assert!(v["label"].is_string(), "{v}");
        answered += 1;
        line.clear();
    }
    assert_eq!(answered, 200, "accepted requests were lost");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!server.socket.exists(), "socket file left behind");
}

#[test]
fn second_server_is_refused_and_a_stale_socket_is_replaced() {
    let server = Server::tiny(&[]);
    let o = run(
        &[
            "serve",
            "--model",
            tiny_dir().to_str().unwrap(),
            "--socket",
            server.socket.to_str().unwrap(),
        ],
        b"",
    );
    assert_fails(&o, 2, "already listening");
    drop(server);
    // A socket file nobody listens on, as a crashed server leaves.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eb.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let tiny = tiny_dir();
    let server = Server::start_at(dir, &["--model", tiny.to_str().unwrap()]);
    assert!(server.connect().ask(br#"{"text": "ok"}"#)["label"].is_string());
}

#[test]
fn tcp_is_loopback_only_unless_allowed() {
    let o = run(
        &[
            "serve",
            "--model",
            tiny_dir().to_str().unwrap(),
            "--tcp",
            "0.0.0.0:0",
        ],
        b"",
    );
    assert_fails(&o, 2, "--allow-non-loopback");
    // A loopback port: pick a free one, then serve on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _server = Server::tiny(&["--tcp", &addr]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let o = loop {
        let o = run(
            &["classify", "--tcp", &addr, "--json", "a lovely film"],
            b"",
        );
        if o.status.success() || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(v["label"].is_string());
}

/// Bounded load on loopback: 8 clients x 2,000 requests, every response
/// received and matching its id, no errors.
#[test]
fn load_8_clients_x_2000_requests() {
    let server = Server::tiny(&["--queue", "16"]);
    let handles: Vec<_> = (0..8)
        .map(|k| {
            let mut c = server.connect();
            std::thread::spawn(move || {
                for i in 0..2000 {
                    let id = k * 10_000 + i;
                    let req = json!({"id": id, "text": format!("client {k} says {i}")});
                    let v = c.ask(req.to_string().as_bytes());
                    assert_eq!(v["id"], id, "{v}");
                    assert!(v["label"].is_string(), "{v}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let m = server.connect().ask(br#"{"op": "metrics"}"#);
    assert_eq!(m["metrics"]["requests"], 16_000, "{m}");
    assert_eq!(m["metrics"]["errors"], 0, "{m}");
}

/// systemd readiness: READY=1 reaches $NOTIFY_SOCKET, and only once the
/// socket already answers.
#[test]
fn notifies_systemd_when_ready() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let socket = dir.path().join("eb.sock");
    let mut child = edge_bert()
        .args([
            "serve",
            "--model",
            tiny_dir().to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
        ])
        .env("NOTIFY_SOCKET", &notify)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = listener.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    assert!(
        UnixStream::connect(&socket).is_ok(),
        "ready before listening"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn memory_budget_is_enforced_after_warm_up() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("eb.sock");
    let o = run(
        &[
            "serve",
            "--model",
            tiny_dir().to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--memory-budget",
            "1",
        ],
        b"",
    );
    assert_fails(&o, 3, "MiB over --memory-budget 1");
    assert!(!socket.exists());
}
