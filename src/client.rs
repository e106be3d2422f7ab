//! The client side of `edge-bert classify --socket/--tcp/--serial`: one
//! request line out, one response line back. Thin: the response lines are
//! decoded by `edge-bert-wire`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde_json::{json, Value};

use edge_bert_model::{Classification, Error, Result};
use edge_bert_wire::frame::{self, Frame};
use edge_bert_wire::response::{decode_answer, decode_entities, ReplyError};
use edge_bert_wire::EntitiesAnswer;
use edge_bert_wire::{Line, LineReader};

use crate::tty::Port;

trait Stream: std::io::Read + Write + Send {}
impl<T: std::io::Read + Write + Send> Stream for T {}

/// A connection to an `edge-bert serve` daemon.
pub struct Client {
    reader: BufReader<Box<dyn Stream>>,
    next_id: u64,
    line: String,
}

impl Client {
    /// Connects to a Unix socket.
    pub fn unix(path: &Path) -> Result<Client> {
        let s = std::os::unix::net::UnixStream::connect(path).map_err(|e| Error::io(path, e))?;
        Ok(Client::new(Box::new(s)))
    }

    /// Connects over TCP.
    pub fn tcp(addr: &str) -> Result<Client> {
        let s = std::net::TcpStream::connect(addr).map_err(|e| Error::io(addr, e))?;
        s.set_nodelay(true).map_err(|e| Error::io(addr, e))?;
        Ok(Client::new(Box::new(s)))
    }

    fn new(s: Box<dyn Stream>) -> Client {
        Client {
            reader: BufReader::new(s),
            next_id: 0,
            line: String::new(),
        }
    }

    /// Sends one raw request object and returns the response object.
    pub fn request(&mut self, req: &Value) -> Result<Value> {
        let w = self.reader.get_mut();
        let io = |e| Error::io("server connection", e);
        w.write_all(req.to_string().as_bytes()).map_err(io)?;
        w.write_all(b"\n").map_err(io)?;
        w.flush().map_err(io)?;
        self.line.clear();
        let n = self.reader.read_line(&mut self.line).map_err(io)?;
        if n == 0 {
            return Err(Error::Remote {
                code: "closed".into(),
                message: "the server closed the connection".into(),
            });
        }
        serde_json::from_str(&self.line).map_err(|e| Error::Remote {
            code: "bad_response".into(),
            message: e.to_string(),
        })
    }

    /// Sends one text as a classify request (`threshold` replaces a
    /// multi-label model's own) and reads whatever the served model
    /// answers: labels, or an NER model's entities.
    pub fn answer_at(&mut self, text: &str, threshold: Option<f32>) -> Result<Reply> {
        self.next_id += 1;
        let id = self.next_id;
        let mut req = classify_request(text, threshold);
        req["id"] = json!(id);
        let v = self.request(&req)?;
        parse_reply(&v, id)
    }
}

/// What a server answered for one text.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A classifier's (or multi-label model's) labels.
    Labels(Classification),
    /// An NER model's entities, with char offsets.
    Entities(EntitiesAnswer),
}

/// Reads a response to the text request with id `id`: entities when it
/// carries them, else a classification.
pub fn parse_reply(v: &Value, id: u64) -> Result<Reply> {
    if v.get("entities").is_none() || v.get("error").is_some() {
        return parse_classification(v, id).map(Reply::Labels);
    }
    if v["id"] != json!(id) {
        return Err(remote(ReplyError::Malformed(format!(
            "unexpected id in {v}"
        ))));
    }
    decode_entities(v).map(Reply::Entities).map_err(remote)
}

/// A reply error as the library's error.
fn remote(e: ReplyError) -> Error {
    match e {
        ReplyError::Server { code, .. } if code == "empty_text" => Error::EmptyText,
        ReplyError::Server { code, message } => Error::Remote { code, message },
        ReplyError::Malformed(message) => Error::Remote {
            code: "bad_response".into(),
            message,
        },
    }
}

/// A request to classify `text`, with the request's own `threshold` (for a
/// multi-label model) when given; no id.
fn classify_request(text: &str, threshold: Option<f32>) -> Value {
    let mut req = json!({ "text": text });
    if let Some(t) = threshold {
        req["threshold"] = json!(t);
    }
    req
}

/// Reads a server response back into a [`Classification`] (logits are not
/// sent on the wire and come back empty).
fn parse_classification(v: &Value, id: u64) -> Result<Classification> {
    match decode_answer(v, id) {
        Ok(a) => Ok(Classification {
            label: a.label,
            score: a.score,
            scores: a.scores,
            labels: a.labels,
            logits: Vec::new(),
            tokens: a.tokens,
            truncated: a.truncated,
        }),
        Err(e) => Err(remote(e)),
    }
}

/// How often the serial client sends a request that timed out or got a
/// damaged reply before giving up.
const SERIAL_ATTEMPTS: usize = 4;
/// Most frames sent for one request in all (a `corrupt` reply with no id
/// may answer someone else's damaged frame, so it does not use up an
/// attempt, but it cannot make the client send for ever).
const SERIAL_MAX_SENDS: usize = 16;
/// On opening, the port must be quiet this long (stale bytes are dropped
/// meanwhile) before the client speaks, for at most `SERIAL_SETTLE_MAX`.
const SERIAL_QUIET: std::time::Duration = std::time::Duration::from_millis(150);
const SERIAL_SETTLE_MAX: std::time::Duration = std::time::Duration::from_secs(3);

/// Why a serial request is sent again.
enum Resend {
    /// No reply in time, or a damaged one: uses up an attempt.
    Failed(String),
    /// A `corrupt` reply with no id: perhaps to our frame, perhaps to
    /// noise that came before it.
    Corrupt,
}

/// The host side of `edge-bert classify --serial`: every frame it sends is
/// checked (`*XXXXXXXX`, see `edge_bert_wire::frame`), every reply's check is
/// verified, and a frame that was damaged either way is sent again.
pub struct SerialClient {
    reader: LineReader<Port>,
    write: Port,
    next_id: u64,
    timeout: std::time::Duration,
    path: std::path::PathBuf,
}

impl SerialClient {
    /// Opens the port and says hello (`{"op":"health"}`), which also puts
    /// the server's end of the link into checked mode.
    ///
    /// Whatever is waiting on the port is dropped first, and the client
    /// waits for the line to go quiet: replies the server sent to line
    /// noise or to an earlier client are never read as ours. Ids start at
    /// a number unique to this client, so a late reply to another client's
    /// frame cannot match one of ours either.
    pub fn open(path: &Path, baud: u32, timeout: std::time::Duration) -> Result<SerialClient> {
        let mut port = Port::open(path, baud)?;
        settle(&mut port).map_err(|e| Error::io(path, e))?;
        let write = port.try_clone().map_err(|e| Error::io(path, e))?;
        let mut c = SerialClient {
            reader: LineReader::new(port, 1 << 20),
            write,
            next_id: first_id(),
            timeout,
            path: path.to_path_buf(),
        };
        let v = c.request(json!({ "op": "health" }))?;
        if v["status"] != "ok" {
            return Err(Error::Remote {
                code: "bad_response".into(),
                message: format!("health check answered {v}"),
            });
        }
        Ok(c)
    }

    /// Sends one request object (an `id` is added) and returns the reply to
    /// it, resending when a frame is damaged or lost.
    pub fn request(&mut self, mut req: Value) -> Result<Value> {
        self.next_id += 1;
        let id = json!(self.next_id);
        req["id"] = id.clone();
        let mut frame = req.to_string().into_bytes();
        frame::seal(&mut frame);
        frame.push(b'\n');
        let mut last = "no reply".to_string();
        let mut failed = 0;
        for sent in 0..SERIAL_MAX_SENDS {
            if failed == SERIAL_ATTEMPTS {
                break;
            }
            if sent > 0 {
                log::info!("serial: resending request {id} ({last})");
            }
            // The leading newline ends any noise the server holds, so our
            // frame starts clean.
            self.write
                .write_all(b"\n")
                .and_then(|_| self.write.write_all(&frame))
                .and_then(|_| self.write.flush())
                .map_err(|e| Error::io(&self.path, e))?;
            match self.await_reply(&id)? {
                Ok(v) => return Ok(v),
                Err(Resend::Failed(why)) => {
                    failed += 1;
                    last = why;
                }
                Err(Resend::Corrupt) => last = "the server got a damaged frame".into(),
            }
        }
        Err(Error::Remote {
            code: "corrupt".into(),
            message: format!(
                "no good reply from {} after {failed} failed attempts ({last})",
                self.path.display()
            ),
        })
    }

    /// Waits for the reply carrying `id`, skipping every other reply.
    /// `Ok(Err(_))` means: send again.
    fn await_reply(&mut self, id: &Value) -> Result<std::result::Result<Value, Resend>> {
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            let line = match self.reader.next_line() {
                Ok(l) => l,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        return Ok(Err(Resend::Failed("timed out".into())));
                    }
                    continue;
                }
                Err(e) => return Err(Error::io(&self.path, e)),
            };
            let body = match line {
                Line::Eof => {
                    return Err(Error::io(&self.path, std::io::ErrorKind::BrokenPipe.into()))
                }
                Line::TooLong => continue,
                Line::Full(bytes) => match frame::parse(bytes) {
                    Frame::Blank => continue,
                    Frame::Checked(body) => body,
                    // A damaged reply: ours or not, ask again.
                    Frame::Corrupt { .. } | Frame::Plain(_) => {
                        return Ok(Err(Resend::Failed("damaged reply".into())))
                    }
                },
            };
            let Ok(v) = serde_json::from_slice::<Value>(body) else {
                return Ok(Err(Resend::Failed("unreadable reply".into())));
            };
            if &v["id"] == id {
                return Ok(Ok(v));
            }
            // The server saw a damaged frame: if it was ours, send it again
            // (a duplicate answer is skipped by its id).
            if v["id"].is_null() && v["error"]["code"] == "corrupt" {
                return Ok(Err(Resend::Corrupt));
            }
            // Anything else answers an earlier frame: skip it.
        }
    }

    /// Sends one text as a classify request (`threshold` replaces a
    /// multi-label model's own) and reads whatever the served model
    /// answers: labels, or an NER model's entities.
    pub fn answer_at(&mut self, text: &str, threshold: Option<f32>) -> Result<Reply> {
        let v = self.request(classify_request(text, threshold))?;
        parse_reply(&v, self.next_id)
    }
}

/// Drops what is waiting on a freshly opened port, then reads and drops
/// until it has been quiet for [`SERIAL_QUIET`] (at most
/// [`SERIAL_SETTLE_MAX`]): the server may still be answering noise.
fn settle(port: &mut Port) -> std::io::Result<()> {
    use std::io::Read;
    use std::time::Instant;
    port.discard_input()?;
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    let mut buf = [0u8; 4096];
    let mut dropped = 0usize;
    while quiet_since.elapsed() < SERIAL_QUIET && started.elapsed() < SERIAL_SETTLE_MAX {
        match port.read(&mut buf) {
            Ok(n) => {
                dropped += n;
                quiet_since = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    if dropped > 0 {
        log::info!("serial: dropped {dropped} stale bytes before the first request");
    }
    Ok(())
}

/// The first request id of a serial client: from its process id and the
/// clock, so two clients one after another (or a late reply to a frame
/// sent before this one opened the port) do not share ids. Stays below
/// 2^53, exact in any JSON reader.
fn first_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    ((std::process::id() as u64 & 0xfffff) << 30 | (nanos & 0x3fff_ffff)) & ((1 << 50) - 1)
}
