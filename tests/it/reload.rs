//! Model updates on a running server (issue 24): signed bundles, reload on
//! SIGHUP or the `reload` op under load, refusals that keep the old model
//! serving, and anti-rollback. Real server processes, real sockets and
//! signals, the real default model.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_bert_model::signing::{reseal, sign_bundle, SecretKey};
use serde_json::{json, Value};

use crate::serve::{code, send_signal, Server};
use crate::util::*;

/// A directory of bundles ("slots"), a `current` link, trusted keys and a
/// state directory, as a board lays them out.
struct Board {
    dir: tempfile::TempDir,
    key: SecretKey,
}

impl Board {
    fn new() -> Board {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([42; 32]);
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("keys/release.pub"), key.public().to_text()).unwrap();
        Board { dir, key }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A copy of the default int8 bundle in slot `name` (model file hard
    /// linked, never written), relabelled when `relabel`.
    fn slot(&self, name: &str, relabel: bool) -> PathBuf {
        self.slot_from(&int8_dir(), name, relabel)
    }

    fn slot_from(&self, src: &Path, name: &str, relabel: bool) -> PathBuf {
        let slot = self.path(name);
        std::fs::create_dir(&slot).unwrap();
        for entry in std::fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            let to = slot.join(entry.file_name());
            if entry.file_name() == "model.onnx" {
                std::fs::hard_link(entry.path(), &to).unwrap();
            } else {
                std::fs::copy(entry.path(), &to).unwrap();
            }
        }
        if relabel {
            let p = slot.join("manifest.json");
            let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            m["labels"] = json!(["neg", "pos"]);
            m["name"] = json!("relabelled");
            std::fs::write(&p, serde_json::to_string_pretty(&m).unwrap()).unwrap();
        }
        slot
    }

    fn signed(&self, name: &str, relabel: bool, version: u64) -> PathBuf {
        let slot = self.slot(name, relabel);
        sign_bundle(&slot, &self.key, version).unwrap();
        slot
    }

    /// Points `current` at `slot`, atomically (a new link renamed over).
    fn point(&self, slot: &Path) {
        let tmp = self.path("current.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(slot, &tmp).unwrap();
        std::fs::rename(&tmp, self.path("current")).unwrap();
    }

    fn serve(&self, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--model".to_string(),
            self.path("current").to_str().unwrap().to_string(),
            "--trusted-keys".into(),
            self.path("keys").to_str().unwrap().to_string(),
            "--state-dir".into(),
            self.path("state").to_str().unwrap().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_at(dir, &args)
    }
}

fn ask(server: &Server, req: &Value) -> Value {
    server.connect().ask(req.to_string().as_bytes())
}

fn reload(server: &Server) -> Value {
    ask(server, &json!({"op": "reload"}))
}

/// The labels each model answers with.
fn labels_of(model: &str) -> [&'static str; 2] {
    if model.starts_with("relabelled@") {
        ["neg", "pos"]
    } else {
        assert!(model.starts_with("sentiment-int8@"), "{model}");
        ["NEGATIVE", "POSITIVE"]
    }
}

/// 8 clients of continuous load; 10 reloads alternating two signed
/// bundles (different labels, rising versions), half by SIGHUP and half by
/// the `reload` op. No request is lost, and every answer comes from exactly
/// one model and says which.
#[test]
fn ten_reloads_under_8_clients_lose_nothing_and_mix_nothing() {
    let board = Board::new();
    let first = board.signed("v1", false, 1);
    board.point(&first);
    let server = board.serve(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|k| {
            let mut c = server.connect();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut sent, mut versions) = (0u64, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    let id = format!("c{k}-{sent}");
                    let text = format!("client {k} request {sent}: a moving, well acted film");
                    let v = c.ask(json!({"id": id, "text": text}).to_string().as_bytes());
                    assert_eq!(v["id"], json!(id), "{v}");
                    let model = v["model"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no model: {v}"));
                    let labels = labels_of(model);
                    let label = v["label"].as_str().unwrap();
                    assert!(labels.contains(&label), "{model} answered {label}: {v}");
                    for l in labels {
                        assert!(v["scores"][l].is_number(), "{model}: {v}");
                    }
                    let version: u64 = model.rsplit('@').next().unwrap().parse().unwrap();
                    versions.push(version);
                    sent += 1;
                }
                // One client's requests are answered in order: versions
                // never go back.
                assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
                (sent, versions)
            })
        })
        .collect();
    let mut reload_ms = Vec::new();
    let mut extra_kib = Vec::new();
    let started = Instant::now();
    for i in 0..10u64 {
        let version = i + 2;
        let slot = board.signed(&format!("v{version}"), i % 2 == 0, version);
        board.point(&slot);
        if i % 2 == 0 {
            let r = reload(&server);
            assert_eq!(r["reload"], "ok", "{r}");
            assert_eq!(r["model"]["version"], version);
            reload_ms.push(r["ms"].as_u64().unwrap());
            extra_kib.push(r["extra_rss_kib"].as_u64().unwrap());
        } else {
            send_signal(server.pid(), 1);
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let h = ask(&server, &json!({"op": "health"}));
                if h["model"]["version"] == version {
                    reload_ms.push(h["reload"]["last_ms"].as_u64().unwrap());
                    break;
                }
                assert!(h["reload"]["last_error"].is_null(), "{h}");
                assert!(
                    Instant::now() < deadline,
                    "SIGHUP reload never finished: {h}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Some load between reloads.
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    let mut seen = std::collections::BTreeSet::new();
    for c in clients {
        let (sent, versions) = c.join().unwrap();
        total += sent;
        seen.extend(versions);
    }
    let m = ask(&server, &json!({"op": "metrics"}));
    assert_eq!(m["metrics"]["errors"], 0, "{m}");
    let h = ask(&server, &json!({"op": "health"}));
    assert_eq!(h["reload"]["reloads"], 10, "{h}");
    assert_eq!(h["model"]["version"], 11);
    assert!(seen.len() >= 6, "answers came from only {seen:?}");
    let state = std::fs::read_to_string(board.path("state/version-high-water")).unwrap();
    assert_eq!(state.trim(), "11");
    eprintln!(
        "10 reloads in {:.1?} under 8 clients: {total} requests answered, 0 lost, 0 errors; \
         answers from versions {seen:?}; reload ms {reload_ms:?}; extra RSS during the op reloads KiB {extra_kib:?}",
        started.elapsed()
    );
}

/// Every bad bundle is refused, the old model keeps serving, `health`
/// says why: a tampered file, a wrong key, an unsigned bundle, a lower
/// version, a bundle that fails its self-test, one that breaks the memory
/// budget.
#[test]
fn bad_bundles_are_refused_and_the_old_model_keeps_serving() {
    let board = Board::new();
    let good = board.signed("v3", false, 3);
    board.point(&good);
    // First a server without a budget, to measure a reload's peak.
    let peak = {
        let server = board.serve(&[]);
        let again = board.signed("v4", true, 4);
        board.point(&again);
        let r = reload(&server);
        assert_eq!(r["reload"], "ok", "{r}");
        ask(&server, &json!({"op": "metrics"}))["metrics"]["peak_rss_kib"]
            .as_u64()
            .unwrap()
    };
    // Room for another int8 reload, not for the fp32 model (4x its size).
    let budget = (peak / 1024 + 40).to_string();
    let current = board.signed("v5", false, 5);
    board.point(&current);
    let server = board.serve(&["--memory-budget", &budget]);
    let serving = |what: &str| {
        let v = ask(&server, &json!({"text": "a moving film"}));
        assert_eq!(v["model"], "sentiment-int8@5", "{what}: {v}");
        assert_eq!(v["label"], "POSITIVE", "{what}: {v}");
    };
    serving("start");

    let tampered = board.signed("tampered", false, 6);
    let tok = tampered.join("tokenizer.json");
    let mut bytes = std::fs::read(&tok).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&tok, bytes).unwrap();

    let other = SecretKey::from_seed([7; 32]);
    let wrong_key = board.slot("wrong-key", false);
    sign_bundle(&wrong_key, &other, 6).unwrap();

    let unsigned = board.slot("unsigned", false);

    let lower = board.signed("lower", false, 4);

    let failing = board.signed("failing", false, 6);
    let st = failing.join("selftest.jsonl");
    let text = std::fs::read_to_string(&st).unwrap();
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines[0]["probs"] = json!([0.5, 0.5]);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&st, text).unwrap();
    reseal(&failing, &board.key, None).unwrap();

    let fat = board.slot_from(&fp32_dir(), "fat", false);
    sign_bundle(&fat, &board.key, 6).unwrap();

    let manifest_edit = board.signed("manifest-edit", false, 6);
    let p = manifest_edit.join("manifest.json");
    let m = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"version\": 6", "\"version\": 60");
    std::fs::write(&p, m).unwrap();

    let cases: [(&Path, &str); 7] = [
        (&tampered, "tokenizer.json is corrupted"),
        (&manifest_edit, "does not match manifest.json"),
        (&wrong_key, "not trusted here"),
        (&unsigned, "not signed"),
        (&lower, "version 4 is older than version 5"),
        (&failing, "self-test case 1"),
        (&fat, "over --memory-budget"),
    ];
    for (i, (slot, why)) in cases.iter().enumerate() {
        board.point(slot);
        let r = reload(&server);
        assert_eq!(code(&r), "reload_failed", "{}: {r}", slot.display());
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(why), "{}: {msg}", slot.display());
        let h = ask(&server, &json!({"op": "health"}));
        assert_eq!(h["status"], "ok");
        assert_eq!(h["model"]["version"], 5, "{h}");
        assert_eq!(h["reload"]["failures"], i as u64 + 1, "{h}");
        assert!(
            h["reload"]["last_error"].as_str().unwrap().contains(why),
            "{h}"
        );
        serving(why);
        eprintln!(
            "refused {}: {msg}",
            slot.file_name().unwrap().to_string_lossy()
        );
    }
    // A good one after all that.
    let next = board.signed("v6", true, 6);
    board.point(&next);
    let r = reload(&server);
    assert_eq!(r["reload"], "ok", "{r}");
    assert_eq!(
        ask(&server, &json!({"text": "a moving film"}))["label"],
        "pos"
    );
}

/// `reload` is for the Unix socket only; a server with the embedded model
/// has nothing to reload; trusted keys refuse an unsigned bundle at
/// start-up.
#[test]
fn reload_is_refused_off_the_unix_socket_and_unsigned_start_is_refused() {
    let board = Board::new();
    let unsigned = board.slot("unsigned", false);
    board.point(&unsigned);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = edge_bert();
    cmd.args(["serve", "--socket"])
        .arg(dir.path().join("eb.sock"))
        .arg("--model")
        .arg(board.path("current"))
        .arg("--trusted-keys")
        .arg(board.path("keys"))
        .arg("--state-dir")
        .arg(board.path("state"));
    let (o, killed) = run_limited(cmd, Duration::from_secs(120));
    assert!(!killed);
    assert_fails(&o, 3, "not signed");
    let o = run(
        &[
            "serve",
            "--trusted-keys",
            board.path("keys").to_str().unwrap(),
        ],
        b"",
    );
    assert_fails(&o, 2, "--model");
    let empty = tempfile::tempdir().unwrap();
    let o = run(
        &[
            "serve",
            "--model",
            unsigned.to_str().unwrap(),
            "--trusted-keys",
            empty.path().to_str().unwrap(),
        ],
        b"",
    );
    assert_fails(&o, 2, "no *.pub key");

    // The embedded model over TCP and the Unix socket.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let server = Server::start(&["--tcp", &addr]);
    let r = reload(&server);
    assert_eq!(code(&r), "reload_failed", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("embedded"),
        "{r}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let tcp = loop {
        match std::net::TcpStream::connect(&addr) {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut r = BufReader::new(tcp.try_clone().unwrap());
    (&tcp)
        .write_all(b"{\"id\": 1, \"op\": \"reload\"}\n")
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(code(&v), "forbidden", "{v}");
    // SIGHUP with the embedded model: ignored, still serving.
    send_signal(server.pid(), 1);
    std::thread::sleep(Duration::from_millis(200));
    let s = UnixStream::connect(&server.socket).unwrap();
    drop(s);
    assert!(ask(&server, &json!({"text": "fine"}))["label"].is_string());
}

/// `edge-bert reload` is the client: exit 0 when swapped in, 1 when
/// refused, 5 when no server answers.
#[test]
fn the_reload_command_reports_the_outcome() {
    let board = Board::new();
    board.point(&board.signed("v1", false, 1));
    let server = board.serve(&[]);
    let sock = server.socket.to_str().unwrap();
    board.point(&board.signed("v2", true, 2));
    let o = run(&["reload", "--socket", sock], b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["model"]["version"], 2);
    board.point(&board.signed("v0", true, 1));
    let o = run(&["reload", "--socket", sock], b"");
    assert_fails(&o, 1, "version 1 is older than version 2");
    let o = run(&["reload", "--socket", "/nonexistent/eb.sock"], b"");
    assert_fails(&o, 5, "cannot reach the server");
}

/// `cross/deploy.sh --model-only` for real, against a local server: `ssh`
/// runs its command here, `scp` copies, `sudo` just runs. A good bundle is
/// copied into a new slot, `current` flips to it and the server reloads it;
/// an older one is refused by the server, `current` goes back, and the
/// script exits 1 with the good model still serving.
#[test]
fn model_only_deploy_flips_current_and_rolls_back_a_refused_bundle() {
    use std::os::unix::fs::PermissionsExt;
    if emulated() {
        eprintln!("skipped under an emulator: the deploy script runs the host's tools");
        return;
    }
    let board = Board::new();
    let slots = board.path("models");
    std::fs::create_dir(&slots).unwrap();
    let first = board.signed("models/first", false, 3);
    let current = slots.join("current");
    std::os::unix::fs::symlink(&first, &current).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--model".to_string(), current.to_str().unwrap().to_string()];
    for (flag, p) in [("--trusted-keys", "keys"), ("--state-dir", "state")] {
        args.push(flag.into());
        args.push(board.path(p).to_str().unwrap().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_at(dir, &args);
    // The board's tools, run locally.
    let tools = tempfile::tempdir().unwrap();
    let scripts = [
        ("ssh", "for last; do :; done\nexec bash -c \"$last\"\n"),
        (
            "scp",
            "n=$#; i=0; for a; do i=$((i+1)); [ $i -eq $((n-1)) ] && src=\"$a\"; [ $i -eq $n ] && dst=\"$a\"; done\nexec cp -r \"$src\" \"${dst#*:}\"\n",
        ),
        ("sudo", "exec \"$@\"\n"),
    ];
    for (name, body) in scripts {
        let p = tools.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::os::unix::fs::symlink(bin(), tools.path().join("edge-bert")).unwrap();
    let deploy = |bundle: &Path| {
        let path = format!(
            "{}:{}",
            tools.path().display(),
            std::env::var("PATH").unwrap()
        );
        std::process::Command::new("bash")
            .arg(root().join("cross/deploy.sh"))
            .args(["--model-only", bundle.to_str().unwrap(), "pi@localhost"])
            .env("PATH", path)
            .env("EDGE_BERT_SLOTS", &slots)
            .env("EDGE_BERT_SOCKET", &server.socket)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let newer = board.signed("newer", true, 4);
    let o = deploy(&newer);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let slot = std::fs::read_link(&current).unwrap();
    assert!(
        slot.starts_with(&slots) && slot != first,
        "{}",
        slot.display()
    );
    assert!(slot
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("relabelled-v4-"));
    let h = ask(&server, &json!({"op": "health"}));
    assert_eq!(h["model"]["version"], 4, "{h}");
    // The smoke test at the end classified with the new labels.
    assert!(
        stdout(&o).lines().any(|l| l.starts_with("pos\t")),
        "{}",
        stdout(&o)
    );
    // An older bundle: refused, and `current` goes back.
    let older = board.signed("older", false, 2);
    let o = deploy(&older);
    assert_eq!(o.status.code(), Some(1), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("version 2 is older than version 4"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("current goes back"), "{}", stderr(&o));
    assert_eq!(std::fs::read_link(&current).unwrap(), slot);
    let h = ask(&server, &json!({"op": "health"}));
    assert_eq!(h["model"]["version"], 4, "{h}");
    assert_eq!(h["reload"]["failures"], 1, "{h}");
    assert_eq!(
        ask(&server, &json!({"text": "a moving film"}))["label"],
        "pos"
    );
}

/// A signed NER bundle (its self-test holds every token's tag
/// probabilities, made by `sign_bundle`) reloads over a classifier and then
/// answers with entities; one whose self-test was altered and resealed is
/// refused, and the NER model keeps serving.
#[test]
fn a_signed_ner_bundle_reloads_and_its_self_test_guards_it() {
    let board = Board::new();
    let first = board.signed("v1", false, 1);
    board.point(&first);
    let server = board.serve(&[]);
    let text = "2005年7月14日、日本の知床が登録された。";
    assert!(ask(&server, &json!({ "text": text }))["label"].is_string());

    let ner = board.slot_from(&crate::ner::bundle(), "ner2", false);
    sign_bundle(&ner, &board.key, 2).unwrap();
    let st = std::fs::read_to_string(ner.join("selftest.jsonl")).unwrap();
    let first_case: Value = serde_json::from_str(st.lines().next().unwrap()).unwrap();
    assert!(
        first_case["tokens"].as_array().unwrap().len() > 2,
        "{first_case}"
    );
    board.point(&ner);
    let r = reload(&server);
    assert_eq!(r["reload"], "ok", "{r}");
    let entities = || {
        let v = ask(&server, &json!({ "text": text }));
        assert_eq!(v["model"], "ner-ja-int8@2", "{v}");
        crate::ner::as_f32(&v["entities"])
    };
    let served = entities();
    assert!(!served.is_empty());

    let failing = board.slot_from(&crate::ner::bundle(), "ner3", false);
    sign_bundle(&failing, &board.key, 3).unwrap();
    let st = failing.join("selftest.jsonl");
    let mut lines: Vec<Value> = std::fs::read_to_string(&st)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let p = lines[0]["tokens"][1][0].as_f64().unwrap();
    lines[0]["tokens"][1][0] = json!(if p > 0.5 { p - 0.1 } else { p + 0.1 });
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&st, body).unwrap();
    reseal(&failing, &board.key, None).unwrap();
    board.point(&failing);
    let r = reload(&server);
    assert_eq!(code(&r), "reload_failed", "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("self-test case 1") && msg.contains("token 1"),
        "{msg}"
    );
    assert_eq!(entities(), served);
}
