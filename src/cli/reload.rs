//! `edge-bert reload`: ask a running server (on its Unix socket) to load
//! its model again from its path, and wait for the answer.

use std::path::PathBuf;

use edge_bert::client::Client;
use edge_bert::serve as server;
use serde_json::json;

use super::{Failure, EXIT_CONNECT};

#[derive(clap::Args)]
pub struct Args {
    /// The server's Unix socket (default: as `serve`).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<(), Failure> {
    let path = a.socket.unwrap_or_else(server::default_socket_path);
    let mut c = Client::unix(&path).map_err(|e| {
        Failure::new(
            EXIT_CONNECT,
            format!(
                "cannot reach the server on unix socket {}: {e}",
                path.display()
            ),
        )
    })?;
    let v = c
        .request(&json!({ "op": "reload" }))
        .map_err(|e| Failure::new(EXIT_CONNECT, e.to_string()))?;
    if v["reload"] == "ok" {
        return super::print_out(&format!("{v}\n"));
    }
    let msg = v["error"]["message"].as_str().unwrap_or("no answer");
    Err(Failure::new(
        1,
        format!("reload refused, the old model keeps serving: {msg}"),
    ))
}
