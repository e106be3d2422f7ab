//! `edge-bert`: the device-side runtime's transports, under the `edge-bert`
//! command line (`src/main.rs`, `src/cli/`). The model lives in
//! `edge-bert-model`, its kernels in `edge-bert-kernels`, the wire format
//! in `edge-bert-wire`; this crate only moves lines between them and the
//! outside: sockets, a serial port, a client.
//!
//! # Layout
//!
//! From the bottom up (each layer uses only the ones above it in this list
//! or in the crates below it):
//!
//! ```text
//! edge-bert-kernels   tract ops + SIMD kernels, one CPU-feature table
//!        ^
//! edge-bert-model     bundle, manifest, tokenizer, engine, classifier
//!        ^                     edge-bert-wire   codecs, error codes, frame check
//!        |                          ^
//! edge-bert (this)    tty, client, serve/   -> cli/ + main.rs (the binary)
//! ```
//!
//! - `tty`: a serial port opened raw with a read timeout (thin I/O).
//! - [`client`]: talking to a running `edge-bert serve` over a socket or a
//!   serial line.
//! - [`serve`]: `edge-bert serve`: listeners, the one session loop shared
//!   by socket and serial, the inference worker.
//!
//! The binary (`main.rs` parses and dispatches; `cli/` has one file per
//! subcommand) is a thin layer over these.

pub mod client;
pub mod serve;
mod tty;

pub use tty::{check_baud, BAUD_RATES};
