// The Conv1d block of conv models (conv_kernel_size > 0), applied once after layer 0:
// out = act(conv1d(x) + bias) per packed sequence, zero padding (k-1)/2 at each sequence's
// edges, `groups` channel groups. The add + LayerNorm that follows is layernorm_* with a
// residual. All fp32 (the block runs once per forward; its weights stay fp32 in every
// precision).
#include "common.cuh"

// ACT_*: kernels/constants.cuh

// x, out: fp32 [T, H]; weight: [H, H / groups, k] (torch layout); bias: [H]; pos / len: the
// token's position inside its sequence and that sequence's length, [T] each.
// Launch: grid (T, ceil(H / blockDim.x)), block COL_THREADS; thread = (token, output channel).
extern "C" __global__ void conv1d_act(const float* __restrict__ x, const int* __restrict__ pos,
                                      const int* __restrict__ len, int tokens, int H, int k,
                                      int groups, const float* __restrict__ weight,
                                      const float* __restrict__ bias, int act,
                                      float* __restrict__ out) {
  const int t = blockIdx.x;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (t >= tokens || c >= H) return;
  const int cg = H / groups, g = c / cg, pad = (k - 1) / 2;
  const int p = pos[t], n = len[t];
  const size_t seq0 = (size_t)(t - p);
  const float* w = weight + (size_t)c * cg * k;
  float acc = bias[c];
  for (int kk = 0; kk < k; ++kk) {
    const int src = p + kk - pad;  // input position inside the sequence
    if (src < 0 || src >= n) continue;
    const float* xr = x + (seq0 + src) * H + (size_t)g * cg;
    for (int ci = 0; ci < cg; ++ci) acc = fmaf(w[ci * k + kk], xr[ci], acc);
  }
  float y;
  switch (act) {
    case ACT_GELU: y = gelu_erf(acc); break;
    case ACT_TANH: y = tanhf(acc); break;
    default: y = fmaxf(acc, 0.0f); break;
  }
  out[(size_t)t * H + c] = y;
}
