//! The one session loop, shared by every transport: read a line, answer
//! it, write the answer. A socket connection and an open serial port differ
//! only in their [`Link`]: how a line is framed, whether silence times out,
//! and what the end of input means.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::Instant;

use edge_bert_model::Outcome;
use edge_bert_wire::frame::{self, Frame};
use edge_bert_wire::response::{
    write_answer_start, write_embedding_fields, write_entities_fields, write_outcome,
    write_results_start,
};
use edge_bert_wire::{
    decode, encode_error, write_with_id, Embedded, ErrorCode, Found, Line, LineReader, Op,
    RawValue, Req, Scored, Tagged, Texts, VectorFormat,
};
use serde_json::json;

use super::reload::{self, Served};
use super::worker::{Done, Slot, Want};
use super::{peak_rss_kib, Fault, Shared, SHUTDOWN_GRACE};

/// How a transport frames its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    /// A socket: plain lines; a client silent for `--idle-timeout` is
    /// closed; end of input ends the session. `control`: the Unix socket,
    /// where `reload` is allowed.
    Stream { control: bool },
    /// A serial port: lines may carry a CRC-32 suffix ([`frame`]), and once
    /// one has, every line must (a line without one is then damage, not a
    /// person typing). End of input means the port went away.
    Serial { checked: bool },
}

/// What a link makes of one full line.
enum Framed<'a> {
    /// Nothing to answer (a blank line on a serial port).
    Skip,
    /// A request body; `seal` says whether the answer gets a suffix.
    Body(&'a [u8], bool),
    /// A damaged frame: answer `corrupt` with this message.
    Corrupt(String),
}

impl Link {
    /// The longest line this link reads, for `max_text_bytes` of request.
    fn max_line(self, max_text_bytes: usize) -> usize {
        match self {
            Link::Stream { .. } => max_text_bytes,
            Link::Serial { .. } => max_text_bytes + frame::SUFFIX_LEN,
        }
    }

    /// Whether answers are sealed with a suffix.
    fn sealed(self) -> bool {
        matches!(self, Link::Serial { checked: true })
    }

    fn frame<'a>(&mut self, line: &'a [u8]) -> Framed<'a> {
        let Link::Serial { checked } = self else {
            return Framed::Body(line, false);
        };
        match frame::parse(line) {
            Frame::Blank => Framed::Skip,
            Frame::Checked(body) => {
                *checked = true;
                Framed::Body(body, true)
            }
            Frame::Plain(body) if !*checked => Framed::Body(body, false),
            Frame::Plain(_) => Framed::Corrupt("no *CRC suffix on a checked link".into()),
            Frame::Corrupt { expected, actual } => {
                *checked = true;
                Framed::Corrupt(format!(
                    "CRC mismatch: frame says {expected:08X}, body is {actual:08X}"
                ))
            }
        }
    }
}

/// One session's buffers, allocated when it opens and reused for every
/// request on it.
struct Session {
    /// The request's texts, unescaped once by the decoder.
    texts: Texts,
    /// The response being built.
    out: Vec<u8>,
    /// The line to the worker.
    slot: Slot,
}

/// Where a session is in the server's shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Every line is answered.
    Serving,
    /// Past the shutdown grace: lines still arriving are answered
    /// `shutting_down` (ops are still answered), until the peer goes quiet.
    Refusing,
    /// Past twice the grace (a peer that never stops sending): no more
    /// reads; the whole lines already read are answered `shutting_down`.
    CutOff,
}

/// Runs one session until the peer leaves (`Ok`), shutdown (`Ok`), or an
/// I/O error (`Err`; for a serial port, end of input is `BrokenPipe`).
///
/// After shutdown every line that has arrived gets an answer: for
/// [`SHUTDOWN_GRACE`] it is run as usual, then it is answered
/// `shutting_down`; the session ends at the first read that would wait.
pub(super) fn run(
    shared: &Shared,
    read: impl Read,
    write: &mut dyn Write,
    mut link: Link,
) -> std::io::Result<()> {
    let max = shared.cfg.max_text_bytes;
    let mut reader = LineReader::new(read, link.max_line(max));
    let mut session = Session {
        texts: Texts::with_capacity(max + 8),
        out: Vec::with_capacity(shared.out_capacity),
        slot: Slot::new(max + 8, shared.dim, shared.entities),
    };
    let mut idle_since = Instant::now();
    let mut stop_by: Option<Instant> = None;
    loop {
        let stopping = shared.shutdown.load(Ordering::SeqCst);
        let stage = if stopping {
            let now = Instant::now();
            let deadline = *stop_by.get_or_insert_with(|| now + SHUTDOWN_GRACE);
            if now >= deadline + SHUTDOWN_GRACE {
                Stage::CutOff
            } else if now >= deadline {
                Stage::Refusing
            } else {
                Stage::Serving
            }
        } else {
            Stage::Serving
        };
        let line = if stage == Stage::CutOff {
            match reader.buffered_line() {
                Some(l) => l,
                None => return Ok(()),
            }
        } else {
            match reader.next_line() {
                Ok(l) => l,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // Every line that had arrived is answered: done.
                    if stopping {
                        return Ok(());
                    }
                    if matches!(link, Link::Stream { .. })
                        && idle_since.elapsed() >= shared.cfg.idle_timeout
                    {
                        let _ = writeln!(
                            write,
                            "{}",
                            encode_error(
                                None,
                                ErrorCode::IdleTimeout,
                                "no request within --idle-timeout; closing"
                            )
                        );
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        };
        idle_since = Instant::now();
        let seal = match line {
            Line::Eof => {
                return match link {
                    Link::Stream { .. } => Ok(()),
                    Link::Serial { .. } => Err(std::io::ErrorKind::BrokenPipe.into()),
                }
            }
            Line::TooLong => {
                error(
                    shared,
                    &mut session.out,
                    ErrorCode::TooLong,
                    &format!("line longer than --max-text-bytes {max}; discarded"),
                );
                link.sealed()
            }
            Line::Full(bytes) => match link.frame(bytes) {
                Framed::Skip => continue,
                Framed::Body(body, seal) => {
                    let control = matches!(link, Link::Stream { control: true });
                    respond(shared, body, &mut session, stage != Stage::Serving, control);
                    seal
                }
                Framed::Corrupt(message) => {
                    error(shared, &mut session.out, ErrorCode::Corrupt, &message);
                    true
                }
            },
        };
        if seal {
            frame::seal(&mut session.out);
        }
        session.out.push(b'\n');
        write.write_all(&session.out)?;
        write.flush()?;
    }
}

/// Puts an error with no id into `out`, counted.
fn error(shared: &Shared, out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    shared.metrics.errors.fetch_add(1, Ordering::Relaxed);
    out.clear();
    out.extend_from_slice(encode_error(None, code, message).as_bytes());
}

/// What a classify request wants: labels, with or without its own
/// threshold (the worker refuses one for a single-label model, before
/// running it, as `wrong_task`).
fn classify(threshold: Option<f32>) -> Want {
    Want::Classify {
        threshold: threshold.is_some(),
    }
}

/// `threshold`: the request's own, which replaces a multi-label model's.
fn scored<'a>(o: &'a Outcome, served: &'a Served, threshold: Option<f32>) -> Scored<'a> {
    Scored {
        best: o.best,
        probs: &o.probs,
        tokens: o.tokens,
        truncated: o.truncated,
        model: Some(&served.token),
        threshold: served.threshold.map(|own| threshold.unwrap_or(own)),
    }
}

/// Writes the response to one request line into `session.out`, whatever
/// the transport; `stopping` (past the shutdown grace) answers texts
/// `shutting_down` instead of running them. Every id is echoed as the raw
/// token it was sent as. A classification, an embedding or a text's
/// entities allocate nothing here (see `tests/it/alloc.rs`); ops and
/// errors may.
fn respond(shared: &Shared, bytes: &[u8], session: &mut Session, stopping: bool, control: bool) {
    session.out.clear();
    let req = match decode(bytes, &mut session.texts) {
        Ok(r) => r,
        Err(r) => {
            shared.metrics.errors.fetch_add(1, Ordering::Relaxed);
            let e = encode_error(r.id.as_deref(), r.code, &r.message);
            session.out.extend_from_slice(e.as_bytes());
            return;
        }
    };
    let failed = |out: &mut Vec<u8>, id: Option<&RawValue>, code: ErrorCode, msg: &str| {
        out.clear();
        out.extend_from_slice(encode_error(id, code, msg).as_bytes());
    };
    let Session { texts, out, slot } = session;
    if stopping && !matches!(req, Req::Op { .. }) {
        shared.metrics.errors.fetch_add(1, Ordering::Relaxed);
        let msg = "the server is stopping; this line was not run";
        return failed(out, req.id(), ErrorCode::ShuttingDown, msg);
    }
    let (id, many, want, int8, threshold) = match req {
        Req::Op { id, op } => return respond_op(shared, id, op, out, control),
        Req::Classify { id, threshold } => (id, false, classify(threshold), false, threshold),
        Req::ClassifyMany { id, threshold } => (id, true, classify(threshold), false, threshold),
        Req::Embed { id, many, format } => {
            (id, many, Want::Embed, format == VectorFormat::Int8, None)
        }
    };
    shared.metrics.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(Fault::SessionPanic(t)) = &shared.fault {
        if !many && t == texts.get(0) {
            panic!("EDGE_BERT_FAULT: injected session panic");
        }
    }
    if many {
        write_results_start(out, id);
    } else {
        write_answer_start(out, id);
    }
    for (i, text) in texts.iter().enumerate() {
        let (done, served) = match slot.run(shared, text, want) {
            Ok(answer) => answer,
            Err((code, msg)) => return failed(out, id, code, &msg),
        };
        if many {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'{');
        }
        match done {
            Done::Classified(o) => {
                write_outcome(out, &scored(&o, &served, threshold), &served.labels)
            }
            Done::Embedded { tokens, truncated } => {
                let e = Embedded {
                    vector: slot.vector(),
                    tokens,
                    truncated,
                    model: Some(&served.token),
                };
                write_embedding_fields(out, &e, int8);
            }
            Done::Entities { tokens, truncated } => {
                let t = Tagged {
                    text,
                    tokens,
                    truncated,
                    model: Some(&served.token),
                };
                let found = slot.entities().iter().map(|e| Found {
                    // The types of the model that found them (it answers
                    // with its own `served`).
                    label: served
                        .kinds
                        .get(usize::from(e.kind))
                        .map_or("null", String::as_str),
                    bytes: (e.span.0 as usize, e.span.1 as usize),
                    score: e.score,
                });
                write_entities_fields(out, &t, found);
            }
        }
        out.push(b'}');
    }
    if many {
        out.extend_from_slice(b"]}");
    }
}

/// Writes an op's answer into `out`: `{"id":<raw id>, ...}`. `control`:
/// the request came on the Unix socket, where `reload` is allowed.
fn respond_op(shared: &Shared, id: Option<&RawValue>, op: Op, out: &mut Vec<u8>, control: bool) {
    let m = &shared.metrics;
    let served = shared
        .served
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let reloads = || {
        let status = shared
            .reload_status
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        serde_json::to_value(&*status).unwrap_or_default()
    };
    let body = match op {
        // The truth: a failed worker, a server that is stopping, or ok;
        // the model serving, and how the last reload went.
        Op::Health => {
            let mut h = match shared.failure() {
                Some(why) => json!({ "status": "failing", "error": why }),
                None if shared.shutdown.load(Ordering::SeqCst) => json!({ "status": "stopping" }),
                None => json!({ "status": "ok" }),
            };
            h["model"] = serde_json::to_value(&served.id).unwrap_or_default();
            h["reload"] = reloads();
            h
        }
        Op::Info => {
            let mut info = served.info.clone();
            info["reload"] = reloads();
            json!({ "info": info })
        }
        Op::Reload if !control => {
            let e = encode_error(
                id,
                ErrorCode::Forbidden,
                "reload is accepted only on the Unix socket",
            );
            return out.extend_from_slice(e.as_bytes());
        }
        Op::Reload => match reload::run(shared) {
            Ok(report) => report,
            Err(why) => {
                let e = encode_error(id, ErrorCode::ReloadFailed, &why);
                return out.extend_from_slice(e.as_bytes());
            }
        },
        Op::Metrics => {
            let (p50, p99) = m.percentiles();
            json!({ "metrics": {
                "requests": m.requests.load(Ordering::Relaxed),
                "errors": m.errors.load(Ordering::Relaxed),
                "latency_ms_p50": p50,
                "latency_ms_p99": p99,
                "queue_depth": m.queued.load(Ordering::Relaxed),
                "clients": shared.clients.load(Ordering::Relaxed),
                "peak_rss_kib": peak_rss_kib(),
            }})
        }
    };
    write_with_id(out, id, &body);
}
