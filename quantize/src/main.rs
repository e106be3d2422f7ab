//! `edge-bert-quantize`: the host-side int8 quantiser (issue 3, not built yet).
//!
//! This binary only reports that it is not implemented yet; it exists so the
//! workspace layout is in place.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("edge-bert-quantize: not implemented yet (see issue 3)");
    ExitCode::from(2)
}
