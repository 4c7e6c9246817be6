//! The one place that decides which vector instruction set the CPU kernels run: GEMM
//! (`gemm.rs`), attention (`attention`) and LayerNorm (`ops.rs`) all dispatch on
//! [`simd_level`], detected once per process, with one override, [`SIMD_ENV`]. The narrower
//! extensions a kernel needs on top of its level (`avx512_bf16`, AVX512-VNNI, AMX) are
//! detected here too, next to the level they extend; AMX also needs the operating system's
//! permission, which `gemm/amx.rs` requests.

use std::sync::OnceLock;

/// Environment variable that forces a dispatch level for every CPU kernel (`portable`,
/// `avx2`, `avx512`, `neon`); read once.
/// A level this CPU cannot run is ignored (the detected level is used instead).
pub const SIMD_ENV: &str = "DEBERTA_SIMD";

/// Which micro-kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// Plain Rust, auto-vectorised by the compiler for the baseline target. Always available.
    Portable,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512F.
    Avx512,
    /// aarch64 Advanced SIMD (NEON).
    Neon,
}

impl SimdLevel {
    /// All levels, slowest first.
    pub const ALL: [SimdLevel; 4] = [
        SimdLevel::Portable,
        SimdLevel::Avx2,
        SimdLevel::Avx512,
        SimdLevel::Neon,
    ];

    /// Whether this CPU can run the level.
    pub fn is_available(self) -> bool {
        match self {
            SimdLevel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            // (the epilogue and the bf16 path use FMA and AVX2 instructions too; every AVX-512
            // CPU has them, but say so rather than assume)
            SimdLevel::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            SimdLevel::Avx2 | SimdLevel::Avx512 => false,
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(not(target_arch = "aarch64"))]
            SimdLevel::Neon => false,
        }
    }

    /// The levels this CPU can run, slowest first.
    pub fn available() -> Vec<SimdLevel> {
        Self::ALL.into_iter().filter(|l| l.is_available()).collect()
    }

    /// The fastest level this CPU can run.
    pub fn detect() -> SimdLevel {
        *Self::available().last().unwrap_or(&SimdLevel::Portable)
    }

    /// Parse a level name as accepted in [`SIMD_ENV`] (case-insensitive; `scalar` means portable).
    pub fn parse(s: &str) -> Option<SimdLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "generic" => Some(SimdLevel::Portable),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" | "avx512f" | "avx-512" => Some(SimdLevel::Avx512),
            "neon" => Some(SimdLevel::Neon),
            _ => None,
        }
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Portable => "portable",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Neon => "neon",
        }
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The level every CPU kernel dispatches to: the fastest this CPU runs, unless [`SIMD_ENV`] names
/// another available one. Decided once per process.
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        std::env::var(SIMD_ENV)
            .ok()
            .and_then(|s| SimdLevel::parse(&s))
            .filter(|l| l.is_available())
            .unwrap_or_else(SimdLevel::detect)
    })
}

/// Whether CPUID names the vendor GenuineIntel.
pub fn cpu_is_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let v = std::arch::x86_64::__cpuid(0);
        let mut name = [0u8; 12];
        name[..4].copy_from_slice(&v.ebx.to_le_bytes());
        name[4..8].copy_from_slice(&v.edx.to_le_bytes());
        name[8..].copy_from_slice(&v.ecx.to_le_bytes());
        &name == b"GenuineIntel"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has the `avx512_bf16` instructions the dot-product kernel uses.
pub fn bf16_dot_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512bf16") && SimdLevel::Avx512.is_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX-VNNI (`vpdpbusd` on 256-bit registers, VEX-encoded: Alder Lake and
/// later client cores, Sapphire Rapids) besides the AVX2 level.
pub fn avx_vnni_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        SimdLevel::Avx2.is_available() && is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX512-VNNI (`vpdpbusd` on 512-bit registers) besides AVX-512F.
pub fn vnni_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        SimdLevel::Avx512.is_available() && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
