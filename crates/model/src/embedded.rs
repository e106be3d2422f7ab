//! The default model, compiled into the binary with the `embedded-model`
//! feature (on by default), so `edge-bert classify` needs no flags. It is
//! the int8 bundle that `edge-bert-quantize` makes from the fp32 one.

#[cfg(feature = "embedded-model")]
mod inner {
    use crate::bundle::Bundle;
    use crate::error::Result;

    /// Directory (relative to the crate root) of the bundle that is embedded.
    pub const DIR: &str = "models/sentiment-int8";

    static MANIFEST: &str = include_str!("../../../models/sentiment-int8/manifest.json");
    static MODEL: &[u8] = include_bytes!("../../../models/sentiment-int8/model.onnx");
    static TOKENIZER: &[u8] = include_bytes!("../../../models/sentiment-int8/tokenizer.json");

    /// The default model compiled into this binary.
    pub fn bundle() -> Option<Result<Bundle>> {
        Some(
            Bundle::from_static(MANIFEST, MODEL, TOKENIZER).map(|mut b| {
                // The model's bytes are part of this executable's file.
                b.model_file = crate::rows::ModelFile::of_executable(MODEL);
                b
            }),
        )
    }
}

#[cfg(not(feature = "embedded-model"))]
mod inner {
    use crate::bundle::Bundle;
    use crate::error::Result;

    pub fn bundle() -> Option<Result<Bundle>> {
        None
    }
}

pub use inner::*;
