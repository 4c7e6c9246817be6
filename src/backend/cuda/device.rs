//! The GPU: driver probing, context, the module loaded once from the embedded fatbin, device
//! buffers, and one safe wrapper per kernel (the testbed API used by `tests/gpu.rs` and by
//! [`super::CudaModel`]).
//!
//! Every wrapper checks the sizes of the buffers it is given against the shapes before it
//! launches, so a kernel never indexes past a buffer; index-bearing inputs (token ids, the
//! relative-position table, attention tiles) only reach the kernels through [`DeviceBatch`] and
//! [`DeviceRelPos`], whose constructors validate them on the host.
//!
//! Validated on an H200 (2026-11-27, docs/CUDA.md section 4) except the later additions:
//! attention v2, graph capture / replay, the one-copy batch upload and the testbed's
//! `mma_peak` probe compile and are unit-tested on the host but have not run on a GPU yet.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{
    CUdevice_attribute, CUevent_flags, CUfunction_attribute, CUgraphInstantiate_flags, CUresult,
    CUstreamCaptureMode,
};
use cudarc::driver::{
    result as drv, CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaModule, CudaSlice,
    CudaStream, DevicePtr, DriverError, LaunchConfig, PushKernelArg,
};

use super::launch::{self, Packed};
use crate::config::{Activation, PoolingMode};
use crate::error::{Error, Result};
use crate::relpos::RelPosTable;

/// The kernels, compiled by build.rs for sm_80 + sm_90 (SASS) and compute_90 (PTX).
static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels.fatbin"));

/// Element type of a device buffer's values / a kernel's compute type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }
    /// Kernel-name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::BF16 => "bf16",
        }
    }
    /// Values rounded to this type, little-endian bytes.
    pub fn encode(self, v: &[f32]) -> Vec<u8> {
        match self {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
                .collect(),
            Dtype::BF16 => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
                .collect(),
        }
    }
    /// Little-endian bytes of this type back to f32.
    pub fn decode(self, b: &[u8]) -> Vec<f32> {
        match self {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        }
    }
    /// `v` rounded through this type (what the device sees after an upload).
    pub fn round(self, v: &[f32]) -> Vec<f32> {
        self.decode(&self.encode(v))
    }
}

impl From<crate::Precision> for Dtype {
    fn from(p: crate::Precision) -> Self {
        match p {
            crate::Precision::F32 => Dtype::F32,
            crate::Precision::F16 => Dtype::F16,
            crate::Precision::BF16 => Dtype::BF16,
        }
    }
}

/// A device allocation of raw bytes. Kernels receive its address; the wrappers check sizes.
pub struct DevBuf {
    mem: CudaSlice<u8>,
    ptr: u64,
    bytes: usize,
}

impl DevBuf {
    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// Device address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    /// Fail unless the buffer holds `n` elements of `dt`.
    fn need(&self, what: &str, n: usize, dt: Dtype) -> Result<u64> {
        need_bytes(self.ptr, self.bytes, what, n, dt)
    }
}

/// `ptr` if `bytes` hold `n` elements of `dt`.
fn need_bytes(ptr: u64, bytes: usize, what: &str, n: usize, dt: Dtype) -> Result<u64> {
    let want = n
        .checked_mul(dt.size())
        .ok_or_else(|| Error::Device(format!("{what}: size overflow")))?;
    if bytes < want {
        return Err(Error::Device(format!(
            "{what}: buffer of {bytes} bytes is too small for {n} {dt:?} values ({want} bytes)"
        )));
    }
    Ok(ptr)
}

/// A part of a [`DevBuf`] (the parts of a [`DeviceBatch`], which share one allocation).
#[derive(Clone, Copy, Debug)]
pub struct DevView {
    ptr: u64,
    bytes: usize,
}

impl DevView {
    /// Fail unless the part holds `n` elements of `dt`.
    fn need(&self, what: &str, n: usize, dt: Dtype) -> Result<u64> {
        need_bytes(self.ptr, self.bytes, what, n, dt)
    }
}

fn opt_need(b: Option<&DevBuf>, what: &str, n: usize, dt: Dtype) -> Result<u64> {
    b.map_or(Ok(0), |b| b.need(what, n, dt))
}

/// A packed batch on the device, validated: ids below `vocab`, positions and lengths
/// consistent, tiles inside their sequences.
pub struct DeviceBatch {
    /// One allocation holding the [`launch::BatchImage`] the views below point into.
    mem: DevBuf,
    pub ids: DevView,
    pub pos: DevView,
    pub len: DevView,
    pub cu_seqlens: DevView,
    pub tiles: DevView,
    pub tokens: usize,
    pub batch: usize,
    pub n_tiles: usize,
    /// the leading tiles that the tensor-core attention launches
    /// ([`launch::attention_tc_tiles`])
    pub n_tiles_tc: usize,
    pub max_len: usize,
    pub vocab: usize,
}

/// The relative-position index table on the device: `rows` = 2S rows of PK / PQ that its
/// entries index (all entries checked `< rows`).
pub struct DeviceRelPos {
    pub idx: DevBuf,
    pub max_len: usize,
    pub rows: usize,
}

/// Fused epilogue of [`Gpu::gemm`].
#[derive(Clone, Copy)]
pub enum Epi<'a> {
    None,
    /// `+ bias[n]` (fp32 [N])
    Bias(&'a DevBuf),
    /// `gelu(. + bias[n])`
    BiasGelu(&'a DevBuf),
    /// `+ bias[n] + residual[m, n]` (fp32 [M, N], not the output buffer)
    BiasResidual(&'a DevBuf, &'a DevBuf),
}

/// One kernel argument.
enum Arg {
    P(u64),
    I(i32),
    U(u32),
    F(f32),
}

/// Check that the CUDA driver library can be loaded, before cudarc (which panics when it is
/// absent) touches it.
pub fn probe_driver() -> Result<()> {
    let mut names = cudarc::get_lib_name_candidates("cuda");
    names.extend(cudarc::get_lib_name_candidates("nvcuda"));
    let mut last = String::new();
    for n in &names {
        // SAFETY: loading libcuda runs its ELF initializers, exactly what cudarc does next
        // with the same names; the handle is dropped (dlclose) right away, cudarc opens its own.
        match unsafe { libloading::Library::new(n) } {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(Error::Device(format!(
        "no NVIDIA driver found (libcuda.so.1): tried {} candidate names; last error: {last}",
        names.len()
    )))
}

/// (used, total) bytes of the memory of the GPU whose context is current on this thread (any
/// thread that has run a forward), every process's allocations included.
pub fn memory_in_use() -> Result<(usize, usize)> {
    let (free, total) = drv::mem_get_info().map_err(|e| dev_err("cuMemGetInfo", e))?;
    Ok((total.saturating_sub(free), total))
}

/// A driver error as this crate's error, with context.
pub fn dev_err(what: &str, e: DriverError) -> Error {
    if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        return Error::Device(format!("out of GPU memory: {what}"));
    }
    Error::Device(format!("{what}: {e:?}"))
}

/// Per-kernel device time (`DEBERTA_CUDA_PROFILE=1`): an event pair around every launch,
/// folded into totals every few thousand launches and printed when the [`Gpu`] is dropped.
#[derive(Default)]
struct Profile {
    pending: Vec<(String, CudaEvent, CudaEvent)>,
    /// kernel -> (total ms, launches)
    totals: BTreeMap<String, (f64, u64)>,
}

impl Profile {
    fn fold(&mut self) {
        for (name, start, end) in self.pending.drain(..) {
            let ms = start.elapsed_ms(&end).unwrap_or(f32::NAN) as f64;
            let e = self.totals.entry(name).or_insert((0.0, 0));
            e.0 += ms;
            e.1 += 1;
        }
    }
    fn report(&mut self) -> String {
        self.fold();
        let all: f64 = self.totals.values().map(|v| v.0).sum();
        let mut rows: Vec<_> = self.totals.iter().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        let mut out = format!(
            "CUDA kernel profile (device time, event pairs):\n{:<28} {:>8} {:>11} {:>10} {:>6}\n",
            "kernel", "launches", "total ms", "mean us", "share"
        );
        for (name, (ms, n)) in rows {
            out.push_str(&format!(
                "{name:<28} {n:>8} {ms:>11.3} {:>10.1} {:>5.1}%\n",
                ms * 1e3 / *n as f64,
                100.0 * ms / all.max(1e-12)
            ));
        }
        out
    }
}

/// The GPU with our module loaded: context, one stream, every kernel.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
    name: String,
    cc: (i32, i32),
    sms: usize,
    max_smem_optin: usize,
    /// `DEBERTA_CUDA_SYNC=1`: synchronize and check after every launch (debugging).
    sync_each: bool,
    /// `DEBERTA_CUDA_PROFILE=1`: time every launch with events.
    profile: Option<Mutex<Profile>>,
    /// Which attention kernel runs where both can (`AttentionKernel as u8`).
    attention_kernel: AtomicU8,
    /// Which tensor-core GEMM tiles run where both can (`GemmKernel as u8`).
    gemm_kernel: AtomicU8,
    /// Forwards may be captured into CUDA graphs (`DEBERTA_CUDA_GRAPHS=0` turns it off).
    graphs: AtomicBool,
}

/// A captured sequence of launches on the [`Gpu`]'s stream, replayed with one call. The
/// kernel arguments (buffer addresses, sizes) are frozen at capture: replay it only while
/// every buffer it names is alive and unmoved, after writing the new inputs into them.
pub struct GpuGraph(CudaGraph);

// SAFETY: a CUgraph / CUgraphExec may be used from any thread as long as calls on it are
// serialized (CUDA's graph thread-safety rules); `GpuGraph` has no `&self` method that touches
// the graph except `Gpu::replay`, and the model keeps its graphs inside the mutex that
// serializes its forwards.
unsafe impl Send for GpuGraph {}

/// The tensor-core GEMM tiles (`bench --kernel gemm=64|128`, or `DEBERTA_CUDA_GEMM=64|128`
/// when the device is opened).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GemmKernel {
    /// 64 x 64 tiles, 4 warps, 3 stages (the default).
    Tile64 = 1,
    /// 128 x 128 tiles, 8 warps, 4 stages in 80 KB of dynamic shared memory, where the `_k8`
    /// variant applies (K % 8 == 0, aligned operands) and the device allows that much shared
    /// memory; otherwise 64 x 64. Not yet measured.
    Tile128 = 2,
}

impl std::str::FromStr for GemmKernel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "64" | "64x64" => Ok(GemmKernel::Tile64),
            "128" | "128x128" => Ok(GemmKernel::Tile128),
            other => Err(Error::Input(format!(
                "unknown GEMM tiles `{other}` (expected 64 or 128)"
            ))),
        }
    }
}

/// The attention kernel variants (`bench --kernel attention=v1|v2|v2-async`, or
/// `DEBERTA_CUDA_ATTENTION=v1|v2|v2-async` when the device is opened).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AttentionKernel {
    /// kernels/attention.cu: SIMT fp32 FMAs, any head dim and dtype (the default).
    V1 = 1,
    /// kernels/attention_tc.cu: tensor cores, f16 / bf16 with head dim 64; other cases fall
    /// back to V1.
    V2 = 2,
    /// V2 with K / V double-buffered and every operand staged with `cp.async`, the next key
    /// tile's loads overlapping this one's work (`attention_tc_async_*`; not yet measured).
    V2Async = 3,
}

impl std::str::FromStr for AttentionKernel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v1" | "1" => Ok(AttentionKernel::V1),
            "v2" | "2" | "tc" => Ok(AttentionKernel::V2),
            "v2-async" | "v2a" => Ok(AttentionKernel::V2Async),
            other => Err(Error::Input(format!(
                "unknown attention kernel `{other}` (expected v1, v2 or v2-async)"
            ))),
        }
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            if !p.pending.is_empty() || !p.totals.is_empty() {
                eprint!("{}", p.report());
            }
        }
    }
}

impl Gpu {
    /// Open device `ordinal`: probe the driver, create the context, check the compute
    /// capability (8.0 or newer), load the module. Never panics on a machine without a GPU.
    pub fn new(ordinal: usize) -> Result<Self> {
        probe_driver()?;
        // cudarc panics if a driver symbol it wants is missing (a driver older than CUDA
        // 13.0): turn that into an error too.
        match std::panic::catch_unwind(|| Self::open(ordinal)) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(Error::Device(format!(
                    "the CUDA driver could not be used (needs a CUDA 13.0 driver or newer): {msg}"
                )))
            }
        }
    }

    fn open(ordinal: usize) -> Result<Self> {
        let count = CudaContext::device_count()
            .map_err(|e| dev_err("cannot initialize the CUDA driver (cuInit)", e))?;
        if count <= 0 {
            return Err(Error::Device("no CUDA device found".into()));
        }
        if ordinal >= count as usize {
            return Err(Error::Device(format!(
                "CUDA device {ordinal} does not exist ({count} device{} found)",
                if count == 1 { "" } else { "s" }
            )));
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| dev_err("cannot create a CUDA context", e))?;
        let cc = ctx
            .compute_capability()
            .map_err(|e| dev_err("cannot read the compute capability", e))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        if cc.0 < 8 {
            return Err(Error::Device(format!(
                "{name} has compute capability {}.{}; the CUDA kernels need 8.0 or newer (Ampere+)",
                cc.0, cc.1
            )));
        }
        let attr = |a: CUdevice_attribute| ctx.attribute(a).map(|v| v.max(0) as usize);
        let sms = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| dev_err("device attribute", e))?;
        let max_smem_optin =
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
                .map_err(|e| dev_err("device attribute", e))?;
        // SAFETY: one stream only (every launch and copy of this Gpu goes to `stream`), so
        // cudarc's cross-stream event tracking is not needed; buffers are freed only after the
        // stream is synchronized (every public entry point synchronizes before returning).
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own, not the legacy default stream: only such a stream can be
        // captured into a graph.
        let stream = ctx
            .new_stream()
            .map_err(|e| dev_err("cannot create a CUDA stream", e))?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(FATBIN.to_vec()))
            .map_err(|e| dev_err("cannot load the kernel module (fatbin for sm_80/sm_90)", e))?;
        let mut funcs = HashMap::new();
        for n in launch::names::ALL {
            let f = module
                .load_function(n)
                .map_err(|e| dev_err(&format!("kernel `{n}` missing from the module"), e))?;
            funcs.insert(n.to_string(), f);
        }
        let flag = |v: &str| std::env::var(v).is_ok_and(|v| v == "1");
        let sync_each = flag("DEBERTA_CUDA_SYNC");
        let profile = flag("DEBERTA_CUDA_PROFILE").then(|| Mutex::new(Profile::default()));
        let attention_kernel = match std::env::var("DEBERTA_CUDA_ATTENTION") {
            Ok(v) => v.parse::<AttentionKernel>()?,
            Err(_) => AttentionKernel::V1,
        };
        let gemm_kernel = match std::env::var("DEBERTA_CUDA_GEMM") {
            Ok(v) => v.parse::<GemmKernel>()?,
            Err(_) => GemmKernel::Tile64,
        };
        Ok(Gpu {
            ctx,
            stream,
            _module: module,
            funcs,
            name,
            cc,
            sms,
            max_smem_optin,
            sync_each,
            profile,
            attention_kernel: AtomicU8::new(attention_kernel as u8),
            gemm_kernel: AtomicU8::new(gemm_kernel as u8),
            graphs: AtomicBool::new(
                std::env::var("DEBERTA_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            ),
        })
    }

    /// Whether forwards should be captured into graphs: on unless `DEBERTA_CUDA_GRAPHS=0`,
    /// and off while profiling or synchronizing after each launch (both need host work
    /// between launches, which a graph replay skips).
    pub fn graphs_enabled(&self) -> bool {
        self.graphs.load(Ordering::Relaxed) && self.profile.is_none() && !self.sync_each
    }

    /// Allow or forbid graph capture and replay for the following forwards.
    pub fn set_graphs(&self, on: bool) {
        self.graphs.store(on, Ordering::Relaxed);
    }

    /// Capture the launches `record` queues on our stream into a graph, without running
    /// them. `record` must not allocate, copy from the host or synchronize; the capture is
    /// ended (and discarded) even when it fails.
    pub fn capture(&self, record: impl FnOnce() -> Result<()>) -> Result<GpuGraph> {
        self.bind()?;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| dev_err("beginning a graph capture", e))?;
        let recorded = record();
        let ended = self
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(|e| dev_err("ending a graph capture", e));
        recorded?;
        ended?
            .map(GpuGraph)
            .ok_or_else(|| Error::Device("graph capture recorded nothing".into()))
    }

    /// Queue one replay of `g` on our stream.
    pub fn replay(&self, g: &GpuGraph) -> Result<()> {
        g.0.launch()
            .map_err(|e| dev_err("launching a CUDA graph", e))
    }

    /// Select the attention kernel for the following launches.
    pub fn set_attention_kernel(&self, k: AttentionKernel) {
        self.attention_kernel.store(k as u8, Ordering::Relaxed);
    }

    /// The attention kernel selected (see [`AttentionKernel`]).
    pub fn attention_kernel(&self) -> AttentionKernel {
        match self.attention_kernel.load(Ordering::Relaxed) {
            2 => AttentionKernel::V2,
            3 => AttentionKernel::V2Async,
            _ => AttentionKernel::V1,
        }
    }

    /// Select the tensor-core GEMM tiles for the following launches.
    pub fn set_gemm_kernel(&self, k: GemmKernel) {
        self.gemm_kernel.store(k as u8, Ordering::Relaxed);
    }

    /// The tensor-core GEMM tiles selected (see [`GemmKernel`]).
    pub fn gemm_kernel(&self) -> GemmKernel {
        match self.gemm_kernel.load(Ordering::Relaxed) {
            2 => GemmKernel::Tile128,
            _ => GemmKernel::Tile64,
        }
    }

    /// The attention kernel that [`Gpu::attention`] runs for `dt` and head dim `d`: the one
    /// selected, except that version 2 (either variant) needs `d` = 64, f16 or bf16, and its
    /// shared memory (117 KB, pipelined 135 KB) within the device's opt-in limit per block
    /// (sm_86 / sm_89 have 99 KB): otherwise version 1 runs.
    pub fn attention_runs(&self, dt: Dtype, d: usize) -> AttentionKernel {
        let k = self.attention_kernel();
        let smem = match k {
            AttentionKernel::V1 => return k,
            AttentionKernel::V2 => launch::attention_tc_smem_bytes(),
            AttentionKernel::V2Async => launch::attention_tc_async_smem_bytes(),
        };
        if d == launch::ATT_TC_D
            && matches!(dt, Dtype::F16 | Dtype::BF16)
            && smem <= self.max_smem_optin
        {
            k
        } else {
            AttentionKernel::V1
        }
    }

    /// Device name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Compute capability.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }
    /// Multiprocessor count.
    pub fn sm_count(&self) -> usize {
        self.sms
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("cannot bind the CUDA context", e))
    }

    /// Wait for all queued work; surfaces asynchronous kernel errors.
    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| dev_err("CUDA kernel failed", e))
    }

    /// Allocate `bytes` (at least 16) of uninitialized device memory.
    pub fn alloc(&self, bytes: usize, what: &str) -> Result<DevBuf> {
        self.bind()?;
        let n = bytes.max(16);
        // SAFETY: the memory is uninitialized; every buffer is written (upload or kernel
        // output) before any kernel reads it, or poisoned explicitly by tests.
        let mem = unsafe { self.stream.alloc::<u8>(n) }.map_err(|e| {
            dev_err(
                &format!("allocating {:.1} MiB for {what}", n as f64 / 1048576.0),
                e,
            )
        })?;
        let ptr = {
            let (ptr, _guard) = mem.device_ptr(&self.stream);
            ptr
        };
        Ok(DevBuf { ptr, mem, bytes })
    }

    /// Copy bytes to a new device buffer.
    pub fn upload_bytes(&self, b: &[u8], what: &str) -> Result<DevBuf> {
        let mut buf = self.alloc(b.len(), what)?;
        if !b.is_empty() {
            let mut view = buf.mem.slice_mut(..b.len());
            self.stream
                .memcpy_htod(b, &mut view)
                .map_err(|e| dev_err(&format!("uploading {what}"), e))?;
        }
        Ok(buf)
    }
    /// Upload values as `dt`.
    pub fn upload(&self, dt: Dtype, v: &[f32], what: &str) -> Result<DevBuf> {
        self.upload_bytes(&dt.encode(v), what)
    }
    /// Upload u32 values.
    pub fn upload_u32(&self, v: &[u32], what: &str) -> Result<DevBuf> {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.upload_bytes(&b, what)
    }
    /// Upload i32 values.
    pub fn upload_i32(&self, v: &[i32], what: &str) -> Result<DevBuf> {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.upload_bytes(&b, what)
    }
    /// Overwrite the start of `buf` with bytes (`b.len() <= buf.bytes()`).
    pub fn write_bytes(&self, buf: &mut DevBuf, b: &[u8]) -> Result<()> {
        if b.len() > buf.bytes {
            return Err(Error::Device("write_bytes: buffer too small".into()));
        }
        if b.is_empty() {
            return Ok(());
        }
        self.bind()?;
        let mut view = buf.mem.slice_mut(..b.len());
        self.stream
            .memcpy_htod(b, &mut view)
            .map_err(|e| dev_err("host to device copy", e))
    }
    /// Read the first `n` values of type `dt` back (synchronizes).
    pub fn download(&self, dt: Dtype, buf: &DevBuf, n: usize) -> Result<Vec<f32>> {
        buf.need("download", n, dt)?;
        let bytes = n * dt.size();
        let mut host = vec![0u8; bytes];
        if bytes > 0 {
            self.bind()?;
            let view = buf.mem.slice(..bytes);
            self.stream
                .memcpy_dtoh(&view, &mut host)
                .map_err(|e| dev_err("device to host copy", e))?;
        }
        self.sync()?;
        Ok(dt.decode(&host))
    }
    /// Fill the whole buffer with 0xFF bytes: NaN in f32, f16 and bf16 (tests poison outputs
    /// before a launch to catch unwritten elements).
    pub fn poison(&self, buf: &DevBuf) -> Result<()> {
        self.bind()?;
        // SAFETY: `buf.ptr` is a live allocation of at least `buf.bytes` bytes owned by `buf`,
        // made on this context; the memset is ordered on our only stream.
        unsafe { drv::memset_d8_async(buf.ptr, 0xFF, buf.bytes, self.stream.cu_stream()) }
            .map_err(|e| dev_err("memset", e))
    }
    /// Device-to-device copy of `bytes` bytes.
    pub fn copy(&self, src: &DevBuf, dst: &DevBuf, bytes: usize) -> Result<()> {
        if src.bytes < bytes || dst.bytes < bytes {
            return Err(Error::Device("copy: buffer too small".into()));
        }
        self.bind()?;
        // SAFETY: both are live allocations of at least `bytes` bytes (checked above) on this
        // context; the copy is ordered on our only stream.
        unsafe { drv::memcpy_dtod_async(dst.ptr, src.ptr, bytes, self.stream.cu_stream()) }
            .map_err(|e| dev_err("device to device copy", e))
    }

    /// Upload a packed batch after checking every id against `vocab` (one copy).
    pub fn upload_batch(&self, p: &Packed, vocab: usize) -> Result<DeviceBatch> {
        let mut db = None;
        self.refill_batch(&mut db, p, vocab)?;
        db.ok_or_else(|| Error::Device("internal: batch not uploaded".into()))
    }

    /// Upload a packed batch into `db`, reusing its buffer when it is large enough, with one
    /// host-to-device copy. True when it had to allocate a new buffer (graphs naming the old
    /// one are then stale).
    pub fn refill_batch(
        &self,
        db: &mut Option<DeviceBatch>,
        p: &Packed,
        vocab: usize,
    ) -> Result<bool> {
        if let Some(&bad) = p.ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let img = launch::BatchImage::new(p)?;
        let mut fresh = false;
        let mut mem = match db.take() {
            Some(d) if d.mem.bytes >= img.bytes.len() => d.mem,
            old => {
                drop(old); // free first, so that growing does not need old + new at once
                fresh = true;
                let cap = launch::capacity_for(img.bytes.len());
                self.alloc(cap, "packed batch")?
            }
        };
        self.write_bytes(&mut mem, &img.bytes)?;
        let view = |(off, bytes): (usize, usize)| DevView {
            ptr: mem.ptr + off as u64,
            bytes,
        };
        *db = Some(DeviceBatch {
            ids: view(img.parts[0]),
            pos: view(img.parts[1]),
            len: view(img.parts[2]),
            cu_seqlens: view(img.parts[3]),
            tiles: view(img.parts[4]),
            mem,
            tokens: p.tokens(),
            batch: p.batch(),
            n_tiles: p.tiles.len(),
            n_tiles_tc: launch::attention_tc_tiles(&p.tiles),
            max_len: p.max_len,
            vocab,
        });
        Ok(fresh)
    }

    /// Upload the relative-position index table; `rows` = 2S (rows of PK / PQ).
    pub fn upload_relpos(&self, t: &RelPosTable, rows: usize) -> Result<DeviceRelPos> {
        if let Some(&bad) = t.as_slice().iter().find(|&&i| i as usize >= rows) {
            return Err(Error::Device(format!(
                "relative index {bad} >= {rows} rows"
            )));
        }
        Ok(DeviceRelPos {
            idx: self.upload_u32(t.as_slice(), "relative-position table")?,
            max_len: t.max_len(),
            rows,
        })
    }

    fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| Error::Device(format!("kernel `{name}` not loaded")))
    }

    /// Launch `name` on our stream.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list exactly (count, order, and types: `P` for
    /// pointers, `I` int, `U` unsigned, `F` float), every pointer must be null or a live
    /// allocation large enough for every index the kernel computes from the other arguments,
    /// and `smem` must cover the kernel's dynamic shared memory.
    unsafe fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: usize,
        args: &[Arg],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(()); // nothing to do (empty batch)
        }
        self.bind()?;
        let f = self.func(name)?;
        if smem > 48 * 1024 {
            if smem > self.max_smem_optin {
                return Err(Error::Device(format!(
                    "{name} needs {smem} bytes of shared memory; {} allows {}",
                    self.name, self.max_smem_optin
                )));
            }
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(|e| dev_err(&format!("{name}: raising the shared-memory limit"), e))?;
        }
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::P(p) => b.arg(p),
                Arg::I(i) => b.arg(i),
                Arg::U(u) => b.arg(u),
                Arg::F(x) => b.arg(x),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: block,
            shared_mem_bytes: smem as u32,
        };
        let timing = match &self.profile {
            Some(_) => {
                let ev = || {
                    self.ctx
                        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                        .map_err(|e| dev_err("creating a timing event", e))
                };
                let (start, end) = (ev()?, ev()?);
                start
                    .record(&self.stream)
                    .map_err(|e| dev_err("recording an event", e))?;
                Some((start, end))
            }
            None => None,
        };
        // SAFETY: forwarded contract (this function's preconditions).
        unsafe { b.launch(cfg) }.map_err(|e| dev_err(&format!("launching {name}"), e))?;
        if let (Some(p), Some((start, end))) = (&self.profile, timing) {
            end.record(&self.stream)
                .map_err(|e| dev_err("recording an event", e))?;
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            p.pending.push((name.to_string(), start, end));
            if p.pending.len() >= 4096 {
                p.fold();
            }
        }
        if self.sync_each {
            self.stream
                .synchronize()
                .map_err(|e| dev_err(&format!("{name} failed"), e))?;
        }
        Ok(())
    }

    // ----------------------------------------------------------------------------------------
    // Kernel wrappers
    // ----------------------------------------------------------------------------------------

    /// `out[t] = word[ids[t]] (+ pos_emb[pos[t]]) (+ type0)` ([T, n], type `dt`).
    #[allow(clippy::too_many_arguments)]
    pub fn embed_gather(
        &self,
        dt: Dtype,
        b: &DeviceBatch,
        n: usize,
        word: &DevBuf,
        pos_emb: Option<(&DevBuf, usize)>,
        type0: Option<&DevBuf>,
        out: &DevBuf,
    ) -> Result<()> {
        let (pe, pe_rows) = pos_emb.map_or((None, 0), |(b, r)| (Some(b), r));
        if pe.is_some() && b.max_len > pe_rows {
            return Err(Error::Input(format!(
                "sequence of {} tokens exceeds the {pe_rows} position embeddings",
                b.max_len
            )));
        }
        let args = [
            Arg::P(b.ids.need("ids", b.tokens, Dtype::F32)?),
            Arg::P(b.pos.need("pos", b.tokens, Dtype::F32)?),
            Arg::I(b.tokens as i32),
            Arg::I(n as i32),
            Arg::P(word.need("word embeddings", b.vocab * n, dt)?),
            Arg::P(opt_need(pe, "position embeddings", pe_rows * n, dt)?),
            Arg::P(opt_need(type0, "token-type row", n, dt)?),
            Arg::P(out.need("embedding output", b.tokens * n, dt)?),
        ];
        let name = format!("embed_gather_{}", dt.suffix());
        // SAFETY: 8 args = (const uint32_t* ids, const int* pos, int tokens, int n, const T* word,
        // const T* pos_emb, const T* type0, T* out); ids < vocab (DeviceBatch), pos < pe_rows
        // (max_len checked), every buffer size checked above; smem n floats.
        unsafe {
            self.launch(
                &name,
                (b.tokens as u32, 1, 1),
                (launch::row_threads(n), 1, 1),
                n * 4,
                &args,
            )
        }
    }

    /// `out32 = LayerNorm(word[ids] (+ pos) (+ type0))`, compute-type copy to `outc`.
    #[allow(clippy::too_many_arguments)]
    pub fn embed_gather_ln(
        &self,
        dt: Dtype,
        b: &DeviceBatch,
        n: usize,
        word: &DevBuf,
        pos_emb: Option<(&DevBuf, usize)>,
        type0: Option<&DevBuf>,
        ln: (&DevBuf, &DevBuf, f32),
        out32: &DevBuf,
        outc: Option<&DevBuf>,
    ) -> Result<()> {
        let (pe, pe_rows) = pos_emb.map_or((None, 0), |(b, r)| (Some(b), r));
        if pe.is_some() && b.max_len > pe_rows {
            return Err(Error::Input(format!(
                "sequence of {} tokens exceeds the {pe_rows} position embeddings",
                b.max_len
            )));
        }
        let args = [
            Arg::P(b.ids.need("ids", b.tokens, Dtype::F32)?),
            Arg::P(b.pos.need("pos", b.tokens, Dtype::F32)?),
            Arg::I(b.tokens as i32),
            Arg::I(n as i32),
            Arg::P(word.need("word embeddings", b.vocab * n, dt)?),
            Arg::P(opt_need(pe, "position embeddings", pe_rows * n, dt)?),
            Arg::P(opt_need(type0, "token-type row", n, dt)?),
            Arg::P(ln.0.need("LayerNorm weight", n, Dtype::F32)?),
            Arg::P(ln.1.need("LayerNorm bias", n, Dtype::F32)?),
            Arg::F(ln.2),
            Arg::P(out32.need("embedding output", b.tokens * n, Dtype::F32)?),
            Arg::P(opt_need(outc, "embedding output copy", b.tokens * n, dt)?),
        ];
        let name = format!("embed_gather_ln_{}", dt.suffix());
        // SAFETY: 12 args = (ids, pos, int tokens, int n, word, pos_emb, type0, const float* w,
        // const float* b, float eps, float* out32, T* outc), sizes checked above, ids < vocab
        // and positions < pe_rows; smem n floats.
        unsafe {
            self.launch(
                &name,
                (b.tokens as u32, 1, 1),
                (launch::row_threads(n), 1, 1),
                n * 4,
                &args,
            )
        }
    }

    /// `out32 = LayerNorm(input (+ residual))` per row of `n`; `out32` may be `input`.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm(
        &self,
        dt: Dtype,
        input: &DevBuf,
        residual: Option<&DevBuf>,
        rows: usize,
        n: usize,
        ln: (&DevBuf, &DevBuf, f32),
        out32: &DevBuf,
        outc: Option<&DevBuf>,
    ) -> Result<()> {
        let args = [
            Arg::P(input.need("LayerNorm input", rows * n, Dtype::F32)?),
            Arg::P(opt_need(
                residual,
                "LayerNorm residual",
                rows * n,
                Dtype::F32,
            )?),
            Arg::I(rows as i32),
            Arg::I(n as i32),
            Arg::P(ln.0.need("LayerNorm weight", n, Dtype::F32)?),
            Arg::P(ln.1.need("LayerNorm bias", n, Dtype::F32)?),
            Arg::F(ln.2),
            Arg::P(out32.need("LayerNorm output", rows * n, Dtype::F32)?),
            Arg::P(opt_need(outc, "LayerNorm output copy", rows * n, dt)?),
        ];
        let name = format!("layernorm_{}", dt.suffix());
        // SAFETY: 9 args = (const float* in, const float* residual, int rows, int n, const float* w,
        // const float* b, float eps, float* out32, T* outc), sizes checked above; smem n floats.
        unsafe {
            self.launch(
                &name,
                (rows as u32, 1, 1),
                (launch::row_threads(n), 1, 1),
                n * 4,
                &args,
            )
        }
    }

    /// `c[M, N] = epi(a[M, K] . w[N, K]^T)`. `dt` is the input type (F32: the SIMT kernel);
    /// the output is fp32 when `out_f32`, else `dt`. The residual must not be `c`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        dt: Dtype,
        out_f32: bool,
        a: &DevBuf,
        w: &DevBuf,
        m: usize,
        n: usize,
        k: usize,
        epi: Epi<'_>,
        c: &DevBuf,
    ) -> Result<()> {
        let out_dt = if out_f32 { Dtype::F32 } else { dt };
        let (code, bias, res) = match epi {
            Epi::None => (launch::EPI_NONE, None, None),
            Epi::Bias(b) => (launch::EPI_BIAS, Some(b), None),
            Epi::BiasGelu(b) => (launch::EPI_BIAS_GELU, Some(b), None),
            Epi::BiasResidual(b, r) => (launch::EPI_BIAS_RESIDUAL, Some(b), Some(r)),
        };
        if let Some(r) = res {
            if r.ptr == c.ptr {
                return Err(Error::Device(
                    "gemm: the residual must not be the output".into(),
                ));
            }
        }
        let args = [
            Arg::P(a.need("GEMM A", m * k, dt)?),
            Arg::P(w.need("GEMM W", n * k, dt)?),
            Arg::P(opt_need(bias, "GEMM bias", n, Dtype::F32)?),
            Arg::P(opt_need(res, "GEMM residual", m * n, Dtype::F32)?),
            Arg::P(c.need("GEMM output", m * n, out_dt)?),
            Arg::I(m as i32),
            Arg::I(n as i32),
            Arg::I(k as i32),
            Arg::I(code),
        ];
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (name, grid, threads) = match dt {
            Dtype::F32 => (
                "gemm_simt_f32".to_string(),
                launch::gemm_grid(m, n, launch::SG_BM, launch::SG_BN)?,
                launch::SG_THREADS,
            ),
            _ => {
                let k8 = launch::gemm_k8_ok(k, a.ptr, w.ptr);
                let (s, dt_out) = (dt.suffix(), out_dt.suffix());
                if k8
                    && self.gemm_kernel() == GemmKernel::Tile128
                    && launch::gemm_tc_big_smem_bytes() <= self.max_smem_optin
                {
                    (
                        format!("gemm_{s}_{dt_out}_k8_128"),
                        launch::gemm_grid(m, n, launch::TC_BIG, launch::TC_BIG)?,
                        launch::TC_BIG_THREADS,
                    )
                } else {
                    (
                        format!("gemm_{s}_{dt_out}{}", if k8 { "_k8" } else { "" }),
                        launch::gemm_grid(m, n, launch::TC_BM, launch::TC_BN)?,
                        launch::TC_THREADS,
                    )
                }
            }
        };
        let smem = if name.ends_with("_128") {
            launch::gemm_tc_big_smem_bytes()
        } else {
            0
        };
        // SAFETY: 9 args = (const T* A, const T* W, const float* bias, const float* residual,
        // Tout* C, int M, int N, int K, int epi); sizes checked above (bias / residual non-null
        // whenever `epi` reads them); the _k8 variants (incl. _k8_128) only with K % 8 == 0 and
        // 16-byte aligned A / W; static shared memory, except _k8_128's dynamic ring of
        // gemm_tc_big_smem_bytes() (raised above 48 KB in `launch`, checked against the
        // device's limit above).
        unsafe { self.launch(&name, grid, (threads, 1, 1), smem, &args) }
    }

    /// Disentangled attention: `ctx[T, H] = attention(qkv[T, 3H])` for every sequence of `b`.
    /// `pk` (c2p) / `pq` (p2c): [2S, H] in `dt`, `None` when the term is off.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        dt: Dtype,
        b: &DeviceBatch,
        qkv: &DevBuf,
        pk: Option<&DevBuf>,
        pq: Option<&DevBuf>,
        rel: &DeviceRelPos,
        heads: usize,
        d: usize,
        scale: f32,
        ctx: &DevBuf,
    ) -> Result<()> {
        let h = heads * d;
        if (pk.is_some() || pq.is_some()) && b.max_len > rel.max_len {
            return Err(Error::Input(format!(
                "sequence of {} tokens exceeds the relative-position table ({})",
                b.max_len, rel.max_len
            )));
        }
        if heads > 65_535 {
            return Err(Error::Device(format!("{heads} heads: at most 65535")));
        }
        let args = [
            Arg::P(qkv.need("qkv", b.tokens * 3 * h, dt)?),
            Arg::P(opt_need(pk, "PK", rel.rows * h, dt)?),
            Arg::P(opt_need(pq, "PQ", rel.rows * h, dt)?),
            Arg::P(
                rel.idx
                    .need("relative index", 2 * rel.max_len - 1, Dtype::F32)?,
            ),
            Arg::I(rel.max_len as i32),
            Arg::P(b.tiles.need("tiles", b.n_tiles * 4, Dtype::F32)?),
            Arg::I(heads as i32),
            Arg::I(d as i32),
            Arg::F(scale),
            Arg::I(pk.is_some() as i32),
            Arg::I(pq.is_some() as i32),
            Arg::P(ctx.need("attention output", b.tokens * h, dt)?),
        ];
        let (name, threads, smem, blocks) = match self.attention_runs(dt, d) {
            AttentionKernel::V2 => (
                format!("attention_tc_{}", dt.suffix()),
                launch::ATT_TC_THREADS,
                launch::attention_tc_smem_bytes(),
                b.n_tiles_tc,
            ),
            AttentionKernel::V2Async => (
                format!("attention_tc_async_{}", dt.suffix()),
                launch::ATT_TC_THREADS,
                launch::attention_tc_async_smem_bytes(),
                b.n_tiles_tc,
            ),
            AttentionKernel::V1 => {
                let dpl = launch::attention_dpl(d)?;
                let name = format!("attention_{}_dpl{dpl}", dt.suffix());
                let smem = launch::attention_smem_bytes(d);
                (name, launch::ATT_THREADS, smem, b.n_tiles)
            }
        };
        // SAFETY: 12 args = (const T* qkv, const T* pk, const T* pq, const uint32_t* relidx,
        // int max_len, const int4* tiles, int heads, int d, float scale, int c2p, int p2c,
        // T* ctx), the signature of both kernels; tiles stay inside their sequences
        // (DeviceBatch), every relidx entry is < rel.rows (DeviceRelPos) and the kernels clamp
        // offsets to the table, pk / pq are read only when their flag is 1; sizes checked
        // above. Version 1: d <= 32 * DPL. Version 2 (tensor cores): d = 64 and a 2-byte T as
        // it assumes, every row it reads or writes 16-byte aligned (d = 64 and 3H, H multiples
        // of 64 elements; device allocations are 256-byte aligned). smem as
        // attention_smem_bytes(d) / attention_tc_smem_bytes() / attention_tc_async_smem_bytes()
        // (raised above 48 KB in `launch`).
        unsafe {
            self.launch(
                &name,
                (blocks as u32, heads as u32, 1),
                (threads, 1, 1),
                smem,
                &args,
            )
        }
    }

    /// Pool each sequence of `b` from `x` (fp32 [T, h]) into `out` (fp32 [B, modes * h]).
    pub fn pool(
        &self,
        b: &DeviceBatch,
        x: &DevBuf,
        h: usize,
        modes: &[PoolingMode],
        out: &DevBuf,
    ) -> Result<()> {
        let (code, nm) = launch::pool_modes_code(modes)?;
        let args = [
            Arg::P(x.need("pool input", b.tokens * h, Dtype::F32)?),
            Arg::P(b.cu_seqlens.need("cu_seqlens", b.batch + 1, Dtype::F32)?),
            Arg::I(b.batch as i32),
            Arg::I(h as i32),
            Arg::U(code),
            Arg::I(nm),
            Arg::P(out.need("pool output", b.batch * nm as usize * h, Dtype::F32)?),
        ];
        let grid = (
            b.batch as u32,
            h.div_ceil(launch::COL_THREADS as usize) as u32,
            1,
        );
        // SAFETY: 7 args = (const float* x, const int* cu_seqlens, int batch, int H,
        // unsigned modes, int nmodes, float* out); cu_seqlens is monotone and ends at T
        // (Packed), sizes checked above.
        unsafe { self.launch("pool", grid, (launch::COL_THREADS, 1, 1), 0, &args) }
    }

    /// The tensor-core probe of the kernel testbed (kernels/peak.cu): `blocks` blocks of 128
    /// threads, each warp `iters` rounds of 8 mma.sync m16n8k16 in `dt` (f16 or bf16). Returns
    /// the FLOPs it queued; `out` takes one fp32 per thread.
    pub fn mma_peak(&self, dt: Dtype, blocks: usize, iters: usize, out: &DevBuf) -> Result<f64> {
        const THREADS: usize = launch::PEAK_THREADS as usize;
        let name = match dt {
            Dtype::F16 => "mma_peak_f16",
            Dtype::BF16 => "mma_peak_bf16",
            Dtype::F32 => return Err(Error::Input("the mma probe runs in f16 or bf16".into())),
        };
        let iters = i32::try_from(iters).map_err(|_| Error::Input("too many iterations".into()))?;
        let args = [
            Arg::I(iters),
            Arg::P(out.need("probe output", blocks * THREADS, Dtype::F32)?),
        ];
        // SAFETY: 2 args = (int iters, float* out), the kernel's signature; it writes
        // out[blockIdx.x * 128 + threadIdx.x] only, inside the `blocks * 128` floats checked.
        unsafe {
            self.launch(
                name,
                (blocks as u32, 1, 1),
                (THREADS as u32, 1, 1),
                0,
                &args,
            )?
        };
        Ok(launch::mma_peak_flops(blocks, iters as usize))
    }

    /// L2-normalize each row of `x` (fp32 [rows, dim]) in place.
    pub fn l2_normalize(&self, x: &DevBuf, rows: usize, dim: usize) -> Result<()> {
        let args = [
            Arg::P(x.need("normalize", rows * dim, Dtype::F32)?),
            Arg::I(rows as i32),
            Arg::I(dim as i32),
        ];
        // SAFETY: 3 args = (float* x, int rows, int dim), size checked above.
        unsafe {
            self.launch(
                "l2_normalize",
                (rows as u32, 1, 1),
                (launch::row_threads(dim), 1, 1),
                0,
                &args,
            )
        }
    }

    /// Conv block: `out = act(conv1d(x) + bias)` per sequence of `b` (fp32 [T, h]);
    /// `weight`: fp32 [h, h / groups, k].
    #[allow(clippy::too_many_arguments)]
    pub fn conv1d_act(
        &self,
        b: &DeviceBatch,
        x: &DevBuf,
        h: usize,
        k: usize,
        groups: usize,
        weight: &DevBuf,
        bias: &DevBuf,
        act: Activation,
        out: &DevBuf,
    ) -> Result<()> {
        if groups == 0 || !h.is_multiple_of(groups) || k == 0 {
            return Err(Error::Device(format!(
                "conv: bad groups {groups} / kernel {k} for {h} channels"
            )));
        }
        let act_code = launch::activation_code(act);
        let args = [
            Arg::P(x.need("conv input", b.tokens * h, Dtype::F32)?),
            Arg::P(b.pos.need("pos", b.tokens, Dtype::F32)?),
            Arg::P(b.len.need("len", b.tokens, Dtype::F32)?),
            Arg::I(b.tokens as i32),
            Arg::I(h as i32),
            Arg::I(k as i32),
            Arg::I(groups as i32),
            Arg::P(weight.need("conv weight", h * (h / groups) * k, Dtype::F32)?),
            Arg::P(bias.need("conv bias", h, Dtype::F32)?),
            Arg::I(act_code),
            Arg::P(out.need("conv output", b.tokens * h, Dtype::F32)?),
        ];
        let grid = (
            b.tokens as u32,
            h.div_ceil(launch::COL_THREADS as usize) as u32,
            1,
        );
        // SAFETY: 11 args = (const float* x, const int* pos, const int* len, int tokens, int H,
        // int k, int groups, const float* weight, const float* bias, int act, float* out);
        // pos / len describe the packed sequences (Packed), so every source row stays inside
        // the token's own sequence; sizes checked above.
        unsafe { self.launch("conv1d_act", grid, (launch::COL_THREADS, 1, 1), 0, &args) }
    }
}
