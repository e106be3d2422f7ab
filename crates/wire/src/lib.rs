//! `edge-bert-wire`: the wire format of `edge-bert serve`, pure codecs in
//! both directions. No sockets, no model: transports and the client stay
//! thin and call into this (see `docs/protocol.md`).
//!
//! A request is one JSON object per line, `{"id": <any>, "text": "..."}`,
//! `{"id": <any>, "texts": [..]}`, `{"op": "embed", "text": ..}` (or
//! `texts`) or `{"op": "health" | "info" | "metrics" | "reload"}`. Anything else is answered with an error object carrying
//! one of the [`ErrorCode`]s, and the connection stays usable. On a serial
//! line each line may carry a CRC-32 suffix ([`frame`]).
//!
//! # Layout
//!
//! - [`code`]: [`ErrorCode`], every error code the server sends.
//! - [`line`](mod@line): [`LineReader`], `\n`-terminated lines into a fixed buffer.
//! - [`request`]: the request decoder and the JSON-string unescaper; texts
//!   are unescaped once, into [`Texts`].
//! - [`response`]: the server's response encoders (labels, vectors, an NER
//!   model's entities with char offsets) and the client's decoders of the
//!   same lines.
//! - [`frame`]: the serial line's `*XXXXXXXX` CRC-32 suffix.

pub mod code;
pub mod frame;
pub mod line;
pub mod request;
pub mod response;

pub use code::ErrorCode;
pub use line::{Line, LineReader};
pub use request::{
    decode, decode_request, Op, Refusal, Req, Request, Texts, VectorFormat, MAX_TEXTS,
};
pub use response::{
    encode_error, label_tokens, write_with_id, Embedded, EntitiesAnswer, Found, NamedEntity,
    Scored, Tagged,
};
pub use serde_json::value::RawValue;
