//! The client side of `edge-bert classify --socket/--tcp`: one request line
//! out, one response line back, in order.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::Classification;

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
    if let Some(err) = v.get("error") {
        let code = err["code"].as_str().unwrap_or("unknown").to_string();
        let message = err["message"].as_str().unwrap_or("").to_string();
        return Err(if code == "empty_text" {
            Error::EmptyText
        } else {
            Error::Remote { code, message }
        });
    }
    let bad = |what: &str| Error::Remote {
        code: "bad_response".into(),
        message: format!("{what} in {v}"),
    };
    if v["id"] != json!(id) {
        return Err(bad("unexpected id"));
    }
    let scores = v["scores"]
        .as_object()
        .ok_or_else(|| bad("no scores"))?
        .iter()
        .map(|(k, p)| {
            Ok((
                k.clone(),
                p.as_f64().ok_or_else(|| bad("bad score"))? as f32,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Classification {
        label: v["label"]
            .as_str()
            .ok_or_else(|| bad("no label"))?
            .to_string(),
        score: v["score"].as_f64().ok_or_else(|| bad("no score"))? as f32,
        scores,
        logits: Vec::new(),
        tokens: v["tokens"].as_u64().ok_or_else(|| bad("no tokens"))? as usize,
        truncated: v["truncated"]
            .as_bool()
            .ok_or_else(|| bad("no truncated"))?,
    })
}
