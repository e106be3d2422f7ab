//! The client side of `edge-bert classify --socket/--tcp/--serial`: one
//! request line out, one response line back. Thin: the response lines are
//! decoded by `edge-bert-wire`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde_json::{json, Value};

use edge_bert_model::{Classification, Error, Result};
use edge_bert_wire::frame::{self, Frame};
use edge_bert_wire::response::{decode_answer, ReplyError};
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

    /// Classifies one text on the server.
    pub fn classify(&mut self, text: &str) -> Result<Classification> {
        self.next_id += 1;
        let id = self.next_id;
        let v = self.request(&json!({ "id": id, "text": text }))?;
        parse_classification(&v, id)
    }
}

/// Reads a server response back into a [`Classification`] (logits are not
/// sent on the wire and come back empty).
pub fn parse_classification(v: &Value, id: u64) -> Result<Classification> {
    match decode_answer(v, id) {
        Ok(a) => Ok(Classification {
            label: a.label,
            score: a.score,
            scores: a.scores,
            logits: Vec::new(),
            tokens: a.tokens,
            truncated: a.truncated,
        }),
        Err(ReplyError::Server { code, .. }) if code == "empty_text" => Err(Error::EmptyText),
        Err(ReplyError::Server { code, message }) => Err(Error::Remote { code, message }),
        Err(ReplyError::Malformed(message)) => Err(Error::Remote {
            code: "bad_response".into(),
            message,
        }),
    }
}

/// How often the serial client sends a request before giving up.
const SERIAL_ATTEMPTS: usize = 4;

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
    pub fn open(path: &Path, baud: u32, timeout: std::time::Duration) -> Result<SerialClient> {
        let port = Port::open(path, baud)?;
        let write = port.try_clone().map_err(|e| Error::io(path, e))?;
        let mut c = SerialClient {
            reader: LineReader::new(port, 1 << 20),
            write,
            next_id: 0,
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
        for attempt in 0..SERIAL_ATTEMPTS {
            if attempt > 0 {
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
                Err(why) => last = why,
            }
        }
        Err(Error::Remote {
            code: "corrupt".into(),
            message: format!(
                "no good reply from {} after {SERIAL_ATTEMPTS} attempts ({last})",
                self.path.display()
            ),
        })
    }

    /// Waits for the reply carrying `id`. `Ok(Err(why))` means: send again.
    fn await_reply(&mut self, id: &Value) -> Result<std::result::Result<Value, String>> {
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            let line = match self.reader.next_line() {
                Ok(l) => l,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        return Ok(Err("timed out".into()));
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
                        return Ok(Err("damaged reply".into()))
                    }
                },
            };
            let Ok(v) = serde_json::from_slice::<Value>(body) else {
                return Ok(Err("unreadable reply".into()));
            };
            if &v["id"] == id {
                return Ok(Ok(v));
            }
            // The server saw a damaged frame: if it was ours, send it again
            // (a duplicate answer is skipped by its id).
            if v["id"].is_null() && v["error"]["code"] == "corrupt" {
                return Ok(Err("the server got a damaged frame".into()));
            }
            // Anything else answers an earlier frame: skip it.
        }
    }

    /// Classifies one text on the device.
    pub fn classify(&mut self, text: &str) -> Result<Classification> {
        let v = self.request(json!({ "text": text }))?;
        parse_classification(&v, self.next_id)
    }
}
