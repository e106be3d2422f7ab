//! The one integration-test binary: shared helpers in `it/util.rs`, one
//! module per area. Model tests use the committed bundles under `models/`.

#[path = "it/alloc.rs"]
mod alloc;
#[path = "it/bundle_errors.rs"]
mod bundle_errors;
#[path = "it/cli.rs"]
mod cli;
#[path = "it/deploy.rs"]
mod deploy;
#[path = "it/embed.rs"]
mod embed;
#[path = "it/golden.rs"]
mod golden;
#[path = "it/multilabel.rs"]
mod multilabel;
#[path = "it/ner.rs"]
mod ner;
#[path = "it/reliability.rs"]
mod reliability;
#[path = "it/reload.rs"]
mod reload;
#[path = "it/serial.rs"]
mod serial;
#[path = "it/serve.rs"]
mod serve;
#[path = "it/tokenizer.rs"]
mod tokenizer;
#[path = "it/util.rs"]
mod util;

/// Counts allocations on the server's loop threads (see `it/alloc.rs`).
#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;
