//! The GPU: driver probing, context, the module loaded once from the embedded fatbin (every
//! entry point of [`launch::names`]), device buffers, batch and relative-position uploads,
//! graph capture / replay, and the one generic `launch`. The typed wrapper of each kernel is in
//! [`super::kernels`], the profiler in [`super::profile`].
//!
//! Validated on an H200 (2026-11-27, docs/CUDA.md section 4) except the later additions:
//! attention v2, graph capture / replay, the one-copy batch upload and the testbed's
//! `mma_peak` probe compile and are unit-tested on the host but have not run on a GPU yet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{
    CUdevice_attribute, CUevent_flags, CUfunction_attribute, CUgraphInstantiate_flags, CUresult,
    CUstreamCaptureMode,
};
use cudarc::driver::{
    result as drv, CudaContext, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream,
    DevicePtr, DriverError, LaunchConfig, PushKernelArg,
};

use super::kernels::{AttentionKernel, GemmKernel};
use super::launch::{self, Packed};
use super::profile::Profile;
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
            // (never asked for: `check_device` refuses int8 on CUDA before a device opens)
            crate::Precision::INT8 => Dtype::F32,
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
    pub(super) fn need(&self, what: &str, n: usize, dt: Dtype) -> Result<u64> {
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
    pub(super) fn need(&self, what: &str, n: usize, dt: Dtype) -> Result<u64> {
        need_bytes(self.ptr, self.bytes, what, n, dt)
    }
}

/// The address of `b` if it holds `n` elements of `dt`, null (0) when absent.
pub(super) fn opt_need(b: Option<&DevBuf>, what: &str, n: usize, dt: Dtype) -> Result<u64> {
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

/// One kernel argument.
pub(super) enum Arg {
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

/// The GPU with our module loaded: context, one stream, every kernel.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
    name: String,
    cc: (i32, i32),
    sms: usize,
    pub(super) max_smem_optin: usize,
    /// `DEBERTA_CUDA_SYNC=1`: synchronize and check after every launch (debugging).
    sync_each: bool,
    /// `DEBERTA_CUDA_PROFILE=1`: time every launch with events.
    profile: Option<Mutex<Profile>>,
    /// Which attention kernel runs where both can (`AttentionKernel as u8`).
    pub(super) attention_kernel: AtomicU8,
    /// Which tensor-core GEMM tiles run where both can (`GemmKernel as u8`).
    pub(super) gemm_kernel: AtomicU8,
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

impl Drop for Gpu {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            if !p.is_empty() {
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
    pub(super) unsafe fn launch(
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
            p.push(name, start, end);
        }
        if self.sync_each {
            self.stream
                .synchronize()
                .map_err(|e| dev_err(&format!("{name} failed"), e))?;
        }
        Ok(())
    }
}
