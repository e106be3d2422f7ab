//! The default model, compiled into the binary with the `embedded-model`
//! feature (on by default), so `edge-bert classify` needs no flags. It is
//! the int8 bundle that `edge-bert-quantize` makes from the fp32 one.

#[cfg(feature = "embedded-model")]
mod inner {
    use crate::bundle::Bundle;
    use crate::error::Result;

    /// Directory (relative to the crate root) of the bundle that is embedded.
    pub const DIR: &str = "models/sentiment-int8";

    static MANIFEST: &str = include_str!("../models/sentiment-int8/manifest.json");
    static MODEL: &[u8] = include_bytes!("../models/sentiment-int8/model.onnx");
    static TOKENIZER: &[u8] = include_bytes!("../models/sentiment-int8/tokenizer.json");

    pub fn bundle() -> Option<Result<Bundle>> {
        Some(
            Bundle::from_static(MANIFEST, MODEL, TOKENIZER).map(|mut b| {
                // The model's bytes are part of this executable's file.
                b.model_file = crate::rows::ModelFile::of_executable(MODEL);
                b
            }),
        )
    }

    /// Drops the embedded model file's pages from this process's resident
    /// set. Once a classifier is built nothing reads them again; they are
    /// read-only pages of the executable, so a later read would only fault
    /// them back in from the file, with the same bytes. Harmless if they
    /// were never touched.
    pub fn release_model_pages() {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            let Ok(page) = usize::try_from(page) else {
                return;
            };
            if page == 0 {
                return;
            }
            let start = (MODEL.as_ptr() as usize).div_ceil(page) * page;
            let end = (MODEL.as_ptr() as usize + MODEL.len()) / page * page;
            if end > start {
                // SAFETY: the range lies inside the `MODEL` static, a
                // read-only mapping of the executable file, so dropping its
                // pages cannot lose data: they are reloaded from the file.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
                }
            }
        }
    }
}

#[cfg(not(feature = "embedded-model"))]
mod inner {
    use crate::bundle::Bundle;
    use crate::error::Result;

    pub fn bundle() -> Option<Result<Bundle>> {
        None
    }

    /// Nothing embedded, nothing to release.
    pub fn release_model_pages() {}
}

pub use inner::*;
