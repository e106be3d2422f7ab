//! The one table of CPU features the kernels use, detected once per
//! process, and the one override switch per kernel family.
//!
//! Every kernel family has a `Path` enum (its SIMD builds, fastest first,
//! the portable reference last) that implements [`KernelPath`]; whether a
//! path can run here is read from [`features`], never detected again by the
//! kernel itself. The family's switch is an environment variable read once
//! ([`Family::var`]):
//!
//! | switch | values |
//! |---|---|
//! | `EDGE_BERT_QMATMUL` | `off`, `auto`, `amx`, `vnni`, `avx2`, `sdot`, `neon`, `portable` |
//! | `EDGE_BERT_DYNQUANT` | `off`, `auto`, `avx512`, `avx2`, `neon`, `portable` |
//! | `EDGE_BERT_SOFTMAX` | `off`, `auto`, `avx2`, `portable` |
//! | `EDGE_BERT_GELU` | `off`, `auto`, `avx512`, `avx2`, `portable` |
//! | `EDGE_BERT_ATTENTION` | `off`, `auto`, `avx512`, `avx2`, `portable` |
//!
//! `off` leaves tract's own ops in the graph for that family; a path name
//! forces that build (a path this CPU lacks is logged and `auto` is used).
//! The kernels that other kernels call (the quantiser inside the fused
//! matmul, the softmax inside the attention op) keep running on their
//! family's path when the family is `off`: `off` only stops the swap.

use std::fmt::Debug;
use std::sync::OnceLock;

/// The CPU features the kernels choose their builds by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub avx2: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vnni: bool,
    /// AMX-TILE and AMX-INT8 in CPUID (the OS permission is asked for by
    /// the AMX path itself, when it is first chosen).
    pub amx: bool,
    pub neon: bool,
    pub dotprod: bool,
}

impl Features {
    fn detect() -> Features {
        #[allow(unused_mut)]
        let mut f = Features::default();
        #[cfg(target_arch = "x86_64")]
        {
            f.avx2 = std::is_x86_feature_detected!("avx2");
            f.avx512f = std::is_x86_feature_detected!("avx512f");
            f.avx512bw = std::is_x86_feature_detected!("avx512bw");
            f.avx512vnni = std::is_x86_feature_detected!("avx512vnni");
            // CPUID leaf 7 exists on every x86-64 CPU with AVX2 (it is
            // asked for only then); the intrinsic is safe on x86-64.
            let leaf = f.avx2.then(|| std::arch::x86_64::__cpuid_count(7, 0));
            // EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
            f.amx = leaf.is_some_and(|l| l.edx & (1 << 24) != 0 && l.edx & (1 << 25) != 0);
        }
        #[cfg(target_arch = "aarch64")]
        {
            f.neon = true;
            f.dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
        }
        f
    }
}

/// This CPU's features, detected on first use.
pub fn features() -> &'static Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    FEATURES.get_or_init(Features::detect)
}

/// tract's own kernel choice, set once before tract first looks at the
/// CPU (called by [`crate::install`]). On aarch64, tract's SVE/SVE2 and
/// SME kernels are turned off (`TRACT_SVE_DISABLE`, `TRACT_SME_DISABLE`),
/// so a core with SVE runs the NEON/SDOT kernels that the boards run:
/// under qemu's `max` CPU (128-bit SVE2) tract's SVE path cost 1,231.7 M
/// instructions per 128-token text against 260.6 M for its SDOT path on
/// cortex-a76 (bench/arm_icount.sh). The boards have no SVE; the
/// environment variables still win over this, so `TRACT_SVE_DISABLE=0`
/// brings the SVE kernels back.
pub fn tune_tract() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        #[cfg(target_arch = "aarch64")]
        for knob in ["TRACT_SVE_DISABLE", "TRACT_SME_DISABLE"] {
            if let Err(e) = tract_onnx::tract_core::knobs::set_config_global(knob, "true") {
                log::warn!("cannot set tract's {knob}: {e}");
            }
        }
    });
}

/// A family of kernels with its own switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    QMatMul,
    DynQuant,
    Softmax,
    Gelu,
    Attention,
}

impl Family {
    pub const ALL: [Family; 5] = [
        Family::QMatMul,
        Family::DynQuant,
        Family::Softmax,
        Family::Gelu,
        Family::Attention,
    ];

    /// The environment variable that overrides the family's choice.
    pub fn var(self) -> &'static str {
        match self {
            Family::QMatMul => "EDGE_BERT_QMATMUL",
            Family::DynQuant => "EDGE_BERT_DYNQUANT",
            Family::Softmax => "EDGE_BERT_SOFTMAX",
            Family::Gelu => "EDGE_BERT_GELU",
            Family::Attention => "EDGE_BERT_ATTENTION",
        }
    }
}

/// What a family's switch says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting<'a> {
    /// Unset, empty or `auto`: the family's own rule.
    Auto,
    /// `off`: tract's ops stay in the graph.
    Off,
    /// A path by name.
    Named(&'a str),
}

impl<'a> Setting<'a> {
    /// Reads a switch's value.
    pub fn parse(value: Option<&'a str>) -> Setting<'a> {
        match value.map(str::trim) {
            None | Some("") | Some("auto") => Setting::Auto,
            Some("off") => Setting::Off,
            Some(name) => Setting::Named(name),
        }
    }
}

/// The switch of `family`, read from the environment once per process.
pub fn setting(family: Family) -> Setting<'static> {
    static VALUES: OnceLock<[Option<String>; 5]> = OnceLock::new();
    let values = VALUES.get_or_init(|| Family::ALL.map(|f| std::env::var(f.var()).ok()));
    // `Family::ALL` lists the families in declaration order.
    Setting::parse(values[family as usize].as_deref())
}

/// A kernel family's builds.
pub trait KernelPath: Copy + PartialEq + Debug + 'static {
    /// The family whose switch chooses among them.
    const FAMILY: Family;
    /// Every path, fastest first; the last is the portable one.
    const ALL: &'static [Self];
    /// The path's name, as its switch takes it.
    fn name(self) -> &'static str;
    /// Whether this CPU can run it (from [`features`]).
    fn available(self) -> bool;

    /// The fastest path this CPU has.
    fn best() -> Self {
        Self::ALL
            .iter()
            .copied()
            .find(|p| p.available())
            .unwrap_or(Self::ALL[Self::ALL.len() - 1])
    }
}

/// Writes an x86-only kernel family's `Path` enum (its SIMD builds,
/// fastest first, each present on x86-64 only, then `Portable` on every
/// target), its [`KernelPath`] impl, and its `path()`, decided once per
/// process: `x86_paths!(Gelu: Avx512 "avx512" if avx512f, Avx2 "avx2" if avx2)`.
macro_rules! x86_paths {
    ($family:ident: $($variant:ident $name:literal if $feature:ident),+) => {
        /// The builds of this kernel, fastest first (see [`crate::cpu`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Path {
            $(#[cfg(target_arch = "x86_64")] $variant,)+
            Portable,
        }

        impl $crate::cpu::KernelPath for Path {
            const FAMILY: $crate::cpu::Family = $crate::cpu::Family::$family;
            const ALL: &'static [Path] = &[
                $(#[cfg(target_arch = "x86_64")] Path::$variant,)+
                Path::Portable,
            ];

            fn name(self) -> &'static str {
                match self {
                    $(#[cfg(target_arch = "x86_64")] Path::$variant => $name,)+
                    Path::Portable => "portable",
                }
            }

            fn available(self) -> bool {
                match self {
                    $(#[cfg(target_arch = "x86_64")]
                    Path::$variant => $crate::cpu::features().$feature,)+
                    Path::Portable => true,
                }
            }
        }

        /// The path this kernel runs on (decided once per process).
        pub fn path() -> Path {
            static PATH: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
            *PATH.get_or_init($crate::cpu::kernel_path::<Path>)
        }
    };
}
pub(crate) use x86_paths;

/// Applies `setting` to a family: `None` for `off`, the named path if this
/// CPU has it, else `auto()` (a name this CPU lacks is logged).
pub fn choose<P: KernelPath>(setting: Setting<'_>, auto: impl Fn() -> Option<P>) -> Option<P> {
    match setting {
        Setting::Auto => auto(),
        Setting::Off => None,
        Setting::Named(name) => match P::ALL.iter().copied().find(|p| p.name() == name) {
            Some(p) if p.available() => Some(p),
            _ => {
                let names: Vec<&str> = P::ALL.iter().map(|p| p.name()).collect();
                log::warn!(
                    "{}={name:?}: not a path this CPU has (off, auto, {}); using auto",
                    P::FAMILY.var(),
                    names.join(", ")
                );
                auto()
            }
        },
    }
}

/// The path a family's kernels run on: the switch's named path, else the
/// fastest this CPU has (also when the family is `off`, for the kernels
/// other kernels call).
pub fn kernel_path<P: KernelPath>() -> P {
    choose(setting(P::FAMILY), || Some(P::best())).unwrap_or_else(P::best)
}

/// Whether the family's ops are swapped into the graph (its switch is not
/// `off`).
pub fn enabled(family: Family) -> bool {
    setting(family) != Setting::Off
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        assert_eq!(Setting::parse(None), Setting::Auto);
        assert_eq!(Setting::parse(Some(" auto ")), Setting::Auto);
        assert_eq!(Setting::parse(Some("")), Setting::Auto);
        assert_eq!(Setting::parse(Some("off")), Setting::Off);
        assert_eq!(Setting::parse(Some("neon")), Setting::Named("neon"));
    }

    #[test]
    fn features_are_detected_once() {
        assert!(std::ptr::eq(features(), features()));
        #[cfg(target_arch = "aarch64")]
        assert!(features().neon);
        if features().avx512vnni {
            assert!(features().avx512f);
        }
    }
}
