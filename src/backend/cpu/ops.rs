//! Element-wise and row-wise ops of the forward, in plain fp32.

/// Exact (erf) GELU, as `hidden_act: "gelu"` in transformers: `x/2 * (1 + erf(x/sqrt(2)))`.
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}
