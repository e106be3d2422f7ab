//! Heap allocations per request on the serving loop, counted.
//!
//! The test binary's global allocator counts every allocation made on a
//! thread the server marks as a loop thread (client, serial and inference
//! threads; see `edge_bert_model::alloc_probe`), split into those made inside
//! tract's plan run and all the others. A real server (`server::serve`, in
//! this process, on a real Unix socket, with the default int8 model) is
//! warmed up, then answers requests of mixed lengths. The loop's own count
//! over them must be zero; tract's is printed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edge_bert::serve as server;
use edge_bert_model::alloc_probe::{in_tract_run, on_loop_thread};
use edge_bert_model::Classifier;

pub struct Counting;

static LOOP_ALLOCS: AtomicU64 = AtomicU64::new(0);
static LOOP_BYTES: AtomicU64 = AtomicU64::new(0);
static TRACT_ALLOCS: AtomicU64 = AtomicU64::new(0);
static TRACT_BYTES: AtomicU64 = AtomicU64::new(0);
/// Set `EDGE_BERT_ALLOC_TRACE=1` to print where loop allocations happen.
static TRACE: AtomicBool = AtomicBool::new(false);

thread_local! {
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
    /// This thread's loop allocations outside tract's plan run.
    static THREAD_LOOP_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count(size: usize) {
    if !on_loop_thread() {
        return;
    }
    if in_tract_run() {
        TRACT_ALLOCS.fetch_add(1, Ordering::Relaxed);
        TRACT_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    } else {
        THREAD_LOOP_ALLOCS.with(|c| c.set(c.get() + 1));
        LOOP_ALLOCS.fetch_add(1, Ordering::Relaxed);
        LOOP_BYTES.fetch_add(size as u64, Ordering::Relaxed);
        if TRACE.load(Ordering::Relaxed) && !IN_TRACE.with(Cell::get) {
            IN_TRACE.with(|c| c.set(true));
            eprintln!(
                "loop allocation of {size} bytes at:\n{}",
                std::backtrace::Backtrace::force_capture()
            );
            IN_TRACE.with(|c| c.set(false));
        }
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn snapshot() -> (u64, u64, u64, u64) {
    (
        LOOP_ALLOCS.load(Ordering::SeqCst),
        LOOP_BYTES.load(Ordering::SeqCst),
        TRACT_ALLOCS.load(Ordering::SeqCst),
        TRACT_BYTES.load(Ordering::SeqCst),
    )
}

/// The counters are process-wide: one counted test at a time.
static SERVING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Serves `clf` on a real Unix socket in this process, sends `lines` one
/// at a time (each answer must contain `expect`), and returns the loop's
/// and tract's allocations (count, bytes) over all but the first `warm`.
fn count_serving(clf: Classifier, lines: &[Vec<u8>], warm: usize, expect: &str) -> [u64; 4] {
    let _one = SERVING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("alloc.sock");
    let cfg = server::Config {
        socket: Some(socket.clone()),
        tcp: None,
        max_text_bytes: 16384,
        max_clients: 4,
        queue: 8,
        idle_timeout: Duration::from_secs(600),
        serial: None,
        baud: 115_200,
        source: None,
        signed: None,
    };
    let signals = server::Signals::default();
    let shutdown = signals.shutdown.clone();
    let server = std::thread::spawn(move || server::serve(clf, cfg, signals));
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        match UnixStream::connect(&socket) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("server did not come up: {e}"),
        }
    };
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::with_capacity(1 << 20);
    let mut ask = |req: &[u8]| {
        writer.write_all(req).unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains(expect), "{line}");
    };
    let (warm, measured) = lines.split_at(warm);
    for req in warm {
        ask(req);
    }
    TRACE.store(
        std::env::var_os("EDGE_BERT_ALLOC_TRACE").is_some(),
        Ordering::SeqCst,
    );
    let before = snapshot();
    for req in measured {
        ask(req);
    }
    let after = snapshot();
    TRACE.store(false, Ordering::SeqCst);
    shutdown.store(true, Ordering::SeqCst);
    server.join().unwrap().unwrap();
    [
        after.0 - before.0,
        after.1 - before.1,
        after.2 - before.2,
        after.3 - before.3,
    ]
}

/// Prints the counts and asserts the loop's are zero.
fn report(what: &str, n: usize, [loop_allocs, loop_bytes, tract_allocs, tract_bytes]: [u64; 4]) {
    let n = n as u64;
    eprintln!(
        "alloc: {n} {what}: loop path {loop_allocs} allocations ({loop_bytes} B); \
         tract's plan run {tract_allocs} allocations ({:.1} per request, {:.1} KiB per request)",
        tract_allocs as f64 / n as f64,
        tract_bytes as f64 / n as f64 / 1024.0,
    );
    assert_eq!(
        loop_allocs, 0,
        "the serving loop allocated {loop_allocs} times ({loop_bytes} B) over {n} requests; \
         rerun with EDGE_BERT_ALLOC_TRACE=1 to see where"
    );
    assert!(tract_allocs > 0, "the probe saw no tract run at all");
}

fn to_line(req: serde_json::Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(&req).unwrap();
    line.push(b'\n');
    line
}

#[test]
fn serving_loop_allocates_nothing_per_request() {
    let bundle = edge_bert_model::embedded::bundle()
        .expect("embedded model")
        .unwrap();
    let labels = bundle.manifest.labels.len();
    let mut clf = Classifier::new(&bundle, None).unwrap();
    server::warm_up(&mut clf).unwrap();

    // Requests of mixed lengths from the test split, some with escapes and
    // some with several texts, serialised before counting starts.
    let data = std::fs::read_to_string(crate::util::fp32_dir().join("test.tsv")).unwrap();
    let texts: Vec<&str> = data
        .lines()
        .filter_map(|l| l.split_once('\t').map(|(_, t)| t))
        .collect();
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for (i, t) in texts.iter().enumerate().take(700) {
        lines.push(to_line(match i % 10 {
            0 => serde_json::json!({"id": i, "texts": [t, "café \"ok\" 🎬", t]}),
            1 => serde_json::json!({"id": {"n": i, "tag": "x"}, "text": format!("{t}\n\t\u{e9}")}),
            2 if i % 30 == 2 => serde_json::json!({"id": i, "text": t.repeat(8)}),
            _ => serde_json::json!({"id": i, "text": t}),
        }));
    }
    let counts = count_serving(clf, &lines, 100, "\"label\"");
    report(
        &format!("requests ({labels} labels)"),
        lines.len() - 100,
        counts,
    );
}

/// The `embed` op served from a real embedding model
/// (paraphrase-MiniLM-L3-v2, see `embed.rs`): one text, several, and the
/// int8 format, none of which allocates on the serving loop.
#[test]
fn serving_embed_requests_allocates_nothing() {
    let mut clf = Classifier::from_dir(crate::embed::bundle()).unwrap();
    server::warm_up(&mut clf).unwrap();
    let texts: Vec<String> = crate::embed::references()
        .into_iter()
        .map(|r| r.text)
        .collect();
    let mut lines = Vec::new();
    for round in 0..3 {
        for (i, t) in texts.iter().enumerate() {
            let id = round * 1000 + i;
            lines.push(to_line(match i % 7 {
                0 => serde_json::json!({"id": id, "op": "embed", "texts": [t, "naïve café 🎬", t]}),
                1 => serde_json::json!({"id": id, "op": "embed", "text": t, "format": "int8"}),
                2 => {
                    serde_json::json!({"id": {"n": id}, "op": "embed", "format": "f32", "text": t})
                }
                _ => serde_json::json!({"id": id, "op": "embed", "text": t}),
            }));
        }
    }
    let warm = texts.len();
    let counts = count_serving(clf, &lines, warm, "\"embedding\"");
    report("embed requests", lines.len() - warm, counts);
}

#[test]
fn serving_multilabel_requests_allocates_nothing() {
    let mut clf = Classifier::from_dir(crate::multilabel::bundle()).unwrap();
    server::warm_up(&mut clf).unwrap();
    let texts: Vec<String> = crate::multilabel::references()
        .into_iter()
        .map(|r| r.text)
        .collect();
    let mut lines = Vec::new();
    for round in 0..3 {
        for (i, t) in texts.iter().enumerate() {
            let id = round * 1000 + i;
            lines.push(to_line(match i % 5 {
                0 => serde_json::json!({"id": id, "texts": [t, "naïve café 🎬", t], "threshold": 0.2}),
                1 => serde_json::json!({"id": id, "text": t, "threshold": 0.9}),
                2 => serde_json::json!({"id": {"n": id}, "text": t, "threshold": 1e-3}),
                _ => serde_json::json!({"id": id, "text": t}),
            }));
        }
    }
    let warm = texts.len();
    let counts = count_serving(clf, &lines, warm, "\"labels\"");
    report("multilabel requests", lines.len() - warm, counts);
}

/// Texts served to the NER model made by the recipe (`ner.rs`): one
/// text, several, and an id that is an object, all answered with
/// entities.
#[test]
fn serving_ner_requests_allocates_nothing() {
    let mut clf = Classifier::from_dir(crate::ner::bundle()).unwrap();
    server::warm_up(&mut clf).unwrap();
    let texts: Vec<String> = crate::ner::references()
        .into_iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect();
    let mut lines = Vec::new();
    for round in 0..3 {
        for (i, t) in texts.iter().enumerate() {
            let id = round * 1000 + i;
            lines.push(to_line(match i % 4 {
                0 => serde_json::json!({"id": id, "texts": [t, "東京 \"タワー\"\n", t]}),
                1 => serde_json::json!({"id": {"n": id}, "text": t}),
                _ => serde_json::json!({"id": id, "text": t}),
            }));
        }
    }
    let warm = texts.len();
    let counts = count_serving(clf, &lines, warm, "\"entities\"");
    report("ner requests", lines.len() - warm, counts);
}

/// `Classifier::embed_into` on a real embedding model (paraphrase-MiniLM-L3-v2,
/// see `embed.rs`): after two passes of warm-up, texts of every length cost
/// no allocation outside tract's plan run.
#[test]
fn embedding_a_text_allocates_nothing_outside_tract() {
    let dir = crate::embed::bundle().to_path_buf();
    let texts: Vec<String> = crate::embed::references()
        .into_iter()
        .map(|r| r.text)
        .collect();
    let _one = SERVING.lock().unwrap_or_else(|e| e.into_inner());
    let (allocs, n) = std::thread::spawn(move || {
        let mut clf = Classifier::from_dir(&dir).unwrap();
        let mut v = vec![0.0f32; 384];
        // Warm-up: each length bucket twice (a second input buffer is made
        // the first time tract's state still holds one; see `engine.rs`).
        for t in texts.iter().chain(&texts) {
            clf.embed_into(t, &mut v).unwrap();
        }
        edge_bert_model::alloc_probe::mark_loop_thread();
        TRACE.store(
            std::env::var_os("EDGE_BERT_ALLOC_TRACE").is_some(),
            Ordering::SeqCst,
        );
        let before = THREAD_LOOP_ALLOCS.with(Cell::get);
        for t in texts.iter().rev() {
            clf.embed_into(t, &mut v).unwrap();
        }
        (THREAD_LOOP_ALLOCS.with(Cell::get) - before, texts.len())
    })
    .join()
    .unwrap();
    eprintln!("embed_into: {allocs} allocations outside tract over {n} texts");
    assert_eq!(allocs, 0);
}

/// `Classifier::entities_into` on the recipe's NER model (`ner.rs`): after
/// two passes of warm-up, texts of every length cost no allocation outside
/// tract's plan run (the entity buffer holds the model's maximum length).
#[test]
fn finding_entities_allocates_nothing_outside_tract() {
    let texts: Vec<String> =
        std::fs::read_to_string(crate::util::root().join("tests/fixtures/ner-reference.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["text"].as_str().unwrap().to_string()
            })
            .chain(["東京".to_string(), "x ".repeat(300)])
            .collect();
    let dir = crate::util::root().join("models/ner-ja-int8");
    let _one = SERVING.lock().unwrap_or_else(|e| e.into_inner());
    let (allocs, n, found) = std::thread::spawn(move || {
        let mut clf = Classifier::from_dir(&dir).unwrap();
        let mut out = Vec::with_capacity(clf.manifest().max_seq_len);
        for t in texts.iter().chain(&texts) {
            clf.entities_into(t, &mut out).unwrap();
        }
        edge_bert_model::alloc_probe::mark_loop_thread();
        TRACE.store(
            std::env::var_os("EDGE_BERT_ALLOC_TRACE").is_some(),
            Ordering::SeqCst,
        );
        let before = THREAD_LOOP_ALLOCS.with(Cell::get);
        let mut found = 0;
        for t in texts.iter().rev() {
            clf.entities_into(t, &mut out).unwrap();
            found += out.len();
        }
        (
            THREAD_LOOP_ALLOCS.with(Cell::get) - before,
            texts.len(),
            found,
        )
    })
    .join()
    .unwrap();
    eprintln!(
        "entities_into: {allocs} allocations outside tract over {n} texts ({found} entities)"
    );
    assert!(found > 0);
    assert_eq!(allocs, 0);
}
