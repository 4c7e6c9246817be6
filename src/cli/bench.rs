//! `deberta-embed bench`: the forward timed on fixed shapes (a model or the synthetic xsmall),
//! end to end on a corpus (`--corpus`), a cross-encoder's `rank` (`--rerank`), or the CUDA
//! kernel testbed (`--ops`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use deberta_embed::{Device, Embedder, EmbedderOptions, Precision};

use super::embed::CHUNK;
use super::{input, model_dir, parse_device, parse_precision};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model directory to time (its tokenizer is not used: inputs are fixed-length id runs), or
    /// a hub id (org/name).
    #[arg(
        long,
        value_name = "DIR|ORG/NAME",
        conflicts_with = "synthetic",
        required_unless_present_any = ["synthetic", "ops"]
    )]
    model: Option<PathBuf>,
    /// Hub revision of an org/name model: branch, tag or commit.
    #[arg(long, default_value = deberta_embed::hub::DEFAULT_REVISION)]
    revision: String,
    /// Built-in architecture with deterministic random weights (no download needed).
    #[arg(long, value_name = "ARCH", value_parser = ["xsmall"])]
    synthetic: Option<String>,
    /// End to end instead of fixed shapes: embed every line of FILE (.txt or .jsonl), raw text
    /// in, tokenization included, and report sentences/s (needs --model).
    #[arg(long, value_name = "FILE", requires = "model")]
    corpus: Option<PathBuf>,
    /// Reranking with a cross-encoder (needs --model): one query against 100 documents, the
    /// whole `rank` call timed (forward of the 100 pairs, head, sort). Without
    /// --rerank-input: a 16-token query and 64-token documents of random ids (83-token pairs,
    /// shortened to fit a smaller max_seq_length).
    #[arg(long, requires = "model", conflicts_with = "corpus")]
    rerank: bool,
    /// Text for --rerank, end to end (tokenization included): the first line is the query, every
    /// further line a document (.txt or .jsonl, read as `embed` reads it).
    #[arg(long, value_name = "FILE", requires = "rerank")]
    rerank_input: Option<PathBuf>,
    /// Sequences per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Tokens per sequence (special tokens included).
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Precision: f32 (CPU and GPU), f16 (GPU), bf16 (GPU; on the CPU: bf16 weights, on AMX tiles where the CPU has them) or int8 (CPU: int8 weights, inputs quantized per row; AMX-INT8, AVX512-VNNI or AVX-VNNI). Default: f32 on the CPU, f16 on a GPU.
    #[arg(long)]
    dtype: Option<String>,
    /// Worker threads (default: all cores; at most 4 per core, more is lowered to that with a
    /// notice).
    #[arg(long, value_parser = super::parse_threads)]
    threads: Option<usize>,
    /// Timed iterations (default: as many as fit in about 3 seconds, at least 5).
    #[arg(long)]
    iters: Option<usize>,
    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// End with a JSON line of the results.
    #[arg(long)]
    json: bool,
    /// The kernel testbed instead of the model (CUDA only): every GEMM and attention variant
    /// at the xsmall shapes, checked against the CPU reference, then timed, in TFLOP/s and
    /// GB/s against the device's measured peaks. Uses --device and --dtype (f16 or bf16).
    #[arg(long)]
    ops: bool,
    /// Kernel variant (CUDA only): `attention=v2` is the tensor-core attention (f16/bf16,
    /// head dim 64; otherwise v1 runs), `attention=v2-async` the same with cp.async
    /// double-buffered K/V, default v1 (same as DEBERTA_CUDA_ATTENTION);
    /// `gemm=128` runs 128x128 tensor-core GEMM tiles where K % 8 == 0, default 64 (same as
    /// DEBERTA_CUDA_GEMM); `graphs=off` launches every kernel instead of replaying CUDA graphs,
    /// default on (same as DEBERTA_CUDA_GRAPHS=0). Repeatable.
    #[arg(long, value_name = "OP=VARIANT")]
    kernel: Vec<String>,
}

/// Sort the timings; return (median, mean, min).
fn summarize(times: &mut [f64]) -> (f64, f64, f64) {
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    (times[times.len() / 2], mean, times[0])
}

/// `bench --ops`: the CUDA kernel testbed (`backend::cuda::testbed`).
#[cfg(feature = "cuda")]
fn bench_ops(a: &BenchArgs, device: Device, precision: Precision) -> Result<()> {
    use deberta_embed::backend::cuda::{testbed, Gpu};
    let Device::Cuda(ordinal) = device else {
        bail!("--ops times the CUDA kernels: add --device cuda (the CPU ops have `cargo bench`)");
    };
    let gpu = Gpu::new(ordinal)?;
    let dt = precision.into();
    let (peaks, rows) = testbed::run(&gpu, dt)?;
    println!(
        "{} ({} SMs), {precision}: measured peaks {:.1} TFLOP/s (mma.sync probe), {:.0} GB/s (device copy)",
        gpu.name(),
        gpu.sm_count(),
        peaks.mma_tflops,
        peaks.copy_gbps
    );
    println!(
        "{:<10} {:<18} {:<20} {:>10} {:>6} {:>10} {:>9} {:>6} {:>8} {:>6}",
        "op",
        "variant",
        "shape",
        "rel err",
        "check",
        "median us",
        "TFLOP/s",
        "%peak",
        "GB/s",
        "%peak"
    );
    for r in &rows {
        println!(
            "{:<10} {:<18} {:<20} {:>10.2e} {:>6} {:>10.1} {:>9.1} {:>5.0}% {:>8.0} {:>5.0}%",
            r.op,
            r.variant,
            r.shape,
            r.rel_err,
            if r.ok() { "ok" } else { "FAIL" },
            r.median_us,
            r.tflops,
            100.0 * r.tflops / peaks.mma_tflops,
            r.gbps,
            100.0 * r.gbps / peaks.copy_gbps
        );
    }
    if a.json {
        let v = serde_json::json!({
            "device": gpu.name(),
            "dtype": precision.to_string(),
            "peak_mma_tflops": peaks.mma_tflops,
            "peak_copy_gbps": peaks.copy_gbps,
            "rows": rows.iter().map(|r| serde_json::json!({
                "op": r.op, "variant": r.variant, "shape": r.shape, "rel_err": r.rel_err,
                "tolerance": r.tolerance, "ok": r.ok(), "median_us": r.median_us,
                "tflops": r.tflops, "gbps": r.gbps,
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
    }
    let failed = rows.iter().filter(|r| !r.ok()).count();
    if failed > 0 {
        bail!("{failed} kernel variant(s) failed their check against the CPU reference");
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn bench_ops(_: &BenchArgs, _: Device, _: Precision) -> Result<()> {
    bail!("--ops times the CUDA kernels: this build has no CUDA support (rebuild with --features cuda)")
}

/// `bench --rerank`: `CrossEncoder::rank` of one query against 100 documents (or the
/// documents of --rerank-input), timed whole.
fn bench_rerank(a: &BenchArgs, dir: &Path, device: Device, opts: EmbedderOptions) -> Result<()> {
    const DOCS: usize = 100;
    let opts = EmbedderOptions {
        max_batch_tokens: EmbedderOptions::default().max_batch_tokens,
        ..opts
    };
    let t0 = Instant::now();
    let ce = deberta_embed::CrossEncoder::load_with(dir, device, opts)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    // (workload label, pairs, tokens, one timed call)
    type Run<'a> = Box<dyn Fn() -> Result<Vec<deberta_embed::cross::Ranked>> + 'a>;
    let lines;
    let (label, pairs, tokens, run): (String, usize, usize, Run) = match &a.rerank_input {
        Some(f) => {
            lines = input::read_inputs(f)?;
            let Some((query, docs)) = lines.split_first() else {
                bail!("{}: empty (the first line is the query)", f.display());
            };
            if docs.is_empty() {
                bail!("{}: no documents after the query line", f.display());
            }
            let docs: Vec<&str> = docs.iter().map(String::as_str).collect();
            let refs: Vec<(&str, &str)> = docs.iter().map(|d| (query.as_str(), *d)).collect();
            let tokens = ce.pair_ids(&refs)?.iter().map(Vec::len).sum();
            let n = docs.len();
            (
                format!("{} (text, tokenization included)", f.display()),
                n,
                tokens,
                Box::new(move || Ok(ce.rank(query, &docs, None)?)),
            )
        }
        None => {
            let cfg = ce.embedder().config();
            let vocab = cfg.vocab_size as u64;
            let second = if cfg.type_vocab_size > 1 {
                cfg.vocab_size as u32
            } else {
                0
            };
            let mut state = 0x2545_F491_4F6C_DD1Du64;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                5 + (state % (vocab - 5)) as u32
            };
            // 16 + 64 tokens, or as much as a shorter max_seq_length leaves
            let room = ce.max_seq_length().saturating_sub(3);
            let q_len = 16.min(room / 4);
            let d_len = 64.min(room - q_len);
            let query: Vec<u32> = (0..q_len).map(|_| next()).collect();
            let ids: Vec<Vec<u32>> = (0..DOCS)
                .map(|_| {
                    let mut s = vec![1];
                    s.extend(&query);
                    s.push(2);
                    // the document and its [SEP] have token type 1 (folded into the id)
                    s.extend((0..d_len).map(|_| next() + second));
                    s.push(2 + second);
                    s
                })
                .collect();
            let tokens = ids.iter().map(Vec::len).sum();
            (
                format!("1 query ({q_len} tokens) x {DOCS} documents ({d_len} tokens), random ids"),
                DOCS,
                tokens,
                Box::new(move || {
                    let mut s = ce.logits_of_ids(&ids)?;
                    ce.activate(&mut s, false);
                    Ok(deberta_embed::cross::rank_scores(s.as_slice(), None))
                }),
            )
        }
    };
    for _ in 0..a.warmup {
        std::hint::black_box(run()?);
    }
    let mut times = Vec::new();
    let start = Instant::now();
    loop {
        let t = Instant::now();
        std::hint::black_box(run()?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let done = match a.iters {
            Some(n) => times.len() >= n,
            None => times.len() >= 5 && start.elapsed().as_secs_f64() > 3.0,
        };
        if done {
            break;
        }
    }
    let (median, mean, min) = summarize(&mut times);
    let threads = a.threads.unwrap_or_else(rayon::current_num_threads);
    println!(
        "rerank {label} on {device} ({threads} threads, batch {}): {pairs} pairs, {tokens} tokens, {} iterations",
        a.batch_size,
        times.len()
    );
    println!("load {load_ms:.1} ms");
    println!("median {median:.2} ms   mean {mean:.2} ms   min {min:.2} ms per rank call");
    println!(
        "{:.1} pairs/s   {:.0} tokens/s",
        pairs as f64 / (median / 1e3),
        tokens as f64 / (median / 1e3)
    );
    if a.json {
        let v = serde_json::json!({
            "workload": "rerank",
            "model": dir.display().to_string(),
            "input": label,
            "device": device.to_string(),
            "threads": threads,
            "batch_size": a.batch_size,
            "pairs": pairs,
            "tokens": tokens,
            "iters": times.len(),
            "load_ms": load_ms,
            "median_ms": median,
            "mean_ms": mean,
            "min_ms": min,
            "pairs_per_s": pairs as f64 / (median / 1e3),
            "tokens_per_s": tokens as f64 / (median / 1e3),
        });
        println!("{v}");
    }
    Ok(())
}

/// `bench --corpus`: raw text in, embeddings out, tokenization included.
fn bench_corpus(
    a: &BenchArgs,
    corpus: &Path,
    dir: &Path,
    device: Device,
    opts: EmbedderOptions,
) -> Result<()> {
    let inputs = input::read_inputs(corpus)?;
    if inputs.is_empty() {
        bail!("{}: no sentences", corpus.display());
    }
    let t0 = Instant::now();
    let e = Embedder::load_with(dir, device, opts)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let texts: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let t1 = Instant::now();
    e.encode(&texts[..1])?;
    let first_ms = t1.elapsed().as_secs_f64() * 1e3;
    let tokens: usize = e.token_ids(&texts)?.iter().map(Vec::len).sum();
    for _ in 0..a.warmup.min(1) {
        e.encode(&texts)?;
    }
    let iters = a.iters.unwrap_or(3).max(1);
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        // as `embed` runs: chunks, tokenization overlapped with a GPU's forward
        let t = Instant::now();
        e.encode_chunked(&texts, CHUNK, |emb| -> Result<()> {
            std::hint::black_box(emb);
            Ok(())
        })?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (median, mean, min) = summarize(&mut times);
    let threads = a.threads.unwrap_or_else(rayon::current_num_threads);
    let n = texts.len() as f64;
    println!(
        "{} on {device} ({threads} threads): {} sentences, {tokens} tokens, {} iterations",
        corpus.display(),
        texts.len(),
        times.len()
    );
    println!("load {load_ms:.1} ms, first embedding {first_ms:.1} ms");
    println!("median {median:.1} ms   mean {mean:.1} ms   min {min:.1} ms");
    println!(
        "{:.1} sentences/s   {:.0} tokens/s",
        n / (median / 1e3),
        tokens as f64 / (median / 1e3)
    );
    if a.json {
        let v = serde_json::json!({
            "model": dir.display().to_string(),
            "corpus": corpus.display().to_string(),
            "device": device.to_string(),
            "threads": threads,
            "batch_size": a.batch_size,
            "sentences": texts.len(),
            "tokens": tokens,
            "iters": times.len(),
            "load_ms": load_ms,
            "first_embedding_ms": first_ms,
            "median_ms": median,
            "mean_ms": mean,
            "min_ms": min,
            "sentences_per_s": n / (median / 1e3),
            "tokens_per_s": tokens as f64 / (median / 1e3),
        });
        println!("{v}");
    }
    Ok(())
}

pub fn run(a: BenchArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    if a.batch_size == 0 || a.seq_len < 2 {
        bail!("--batch-size must be >= 1 and --seq-len >= 2");
    }
    let precision = parse_precision(a.dtype.as_deref(), device)?;
    for spec in &a.kernel {
        let (op, variant) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--kernel {spec}: expected OP=VARIANT, e.g. attention=v2"))?;
        if device == Device::Cpu {
            bail!("--kernel {spec}: kernel variants exist on the CUDA device only");
        }
        match op.trim() {
            "attention" => {
                let v = variant.trim().to_ascii_lowercase();
                if !matches!(v.as_str(), "v1" | "v2" | "v2-async") {
                    bail!("--kernel {spec}: attention variants are v1, v2 and v2-async");
                }
                // Read once when the device is opened (below); nothing else runs yet.
                std::env::set_var("DEBERTA_CUDA_ATTENTION", v);
            }
            "gemm" => {
                let v = variant.trim().to_ascii_lowercase();
                if !matches!(v.as_str(), "64" | "64x64" | "128" | "128x128") {
                    bail!("--kernel {spec}: gemm variants are 64 and 128");
                }
                std::env::set_var("DEBERTA_CUDA_GEMM", v);
            }
            "graphs" => {
                let v = match variant.trim().to_ascii_lowercase().as_str() {
                    "on" | "1" => "1",
                    "off" | "0" => "0",
                    _ => bail!("--kernel {spec}: graphs is on or off"),
                };
                std::env::set_var("DEBERTA_CUDA_GRAPHS", v);
            }
            other => {
                bail!("--kernel {spec}: no variants of `{other}` (attention=v1|v2|v2-async, gemm=64|128, graphs=on|off)")
            }
        }
    }
    if a.ops {
        return bench_ops(&a, device, precision);
    }
    let opts = EmbedderOptions {
        threads: a.threads,
        batch_size: a.batch_size,
        normalize: None,
        precision,
        // one forward over the whole B x L batch, as the peers run it
        max_batch_tokens: a.batch_size.saturating_mul(a.seq_len),
    };
    let dir = match &a.model {
        Some(m) => Some(model_dir(m, &a.revision, false)?),
        None => None,
    };
    if let (Some(corpus), Some(dir)) = (&a.corpus, &dir) {
        return bench_corpus(&a, corpus, dir, device, opts);
    }
    if let (true, Some(dir)) = (a.rerank, &dir) {
        return bench_rerank(&a, dir, device, opts);
    }
    // Inputs: [CLS] random pieces [SEP], exactly seq_len tokens each.
    let make_ids = |vocab: usize| -> Vec<Vec<u32>> {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        (0..a.batch_size)
            .map(|_| {
                let mut s = Vec::with_capacity(a.seq_len);
                s.push(1);
                for _ in 1..a.seq_len - 1 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    s.push(4 + (state % (vocab as u64 - 4)) as u32);
                }
                s.push(2);
                s
            })
            .collect()
    };
    // (label, model FLOPs per token at --seq-len, head size, one timed call)
    type Run = Box<dyn Fn() -> Result<()>>;
    let (label, flops_per_token, head_dim, run): (String, f64, usize, Run) =
        match (&dir, &a.synthetic) {
            (Some(dir), _) => {
                let e = Embedder::load_with(dir, device, opts)?;
                if a.seq_len > e.max_seq_length() {
                    bail!(
                        "--seq-len {} exceeds the model's max_seq_length {}",
                        a.seq_len,
                        e.max_seq_length()
                    );
                }
                let ids = make_ids(e.config().vocab_size);
                (
                    dir.display().to_string(),
                    e.config().forward_flops_per_token(a.seq_len),
                    e.config().head_dim,
                    Box::new(move || e.encode_ids(&ids).map(|_| ()).map_err(Into::into)),
                )
            }
            #[cfg(feature = "cuda")]
            (None, Some(_)) if matches!(device, Device::Cuda(_)) => {
                let Device::Cuda(ordinal) = device else {
                    unreachable!()
                };
                let m = deberta_embed::backend::cuda::synthetic_xsmall(ordinal, precision)?;
                if a.seq_len > m.config().max_position_embeddings {
                    bail!("--seq-len must be <= 512 for xsmall");
                }
                let ids = make_ids(m.config().vocab_size);
                let modes = [deberta_embed::PoolingMode::Mean];
                (
                    "synthetic xsmall".to_string(),
                    m.config().forward_flops_per_token(a.seq_len),
                    m.config().head_dim,
                    Box::new(move || {
                        m.encode_batches(&ids, ids.len().max(1), usize::MAX, &modes)
                            .map(|_| ())
                            .map_err(Into::into)
                    }),
                )
            }
            (None, Some(_)) => {
                if device != Device::Cpu {
                    bail!("--synthetic runs on the CPU only in this build");
                }
                let e = Embedder::synthetic_xsmall(opts)?;
                if a.seq_len > e.config().max_position_embeddings {
                    bail!("--seq-len must be <= 512 for xsmall");
                }
                let ids = make_ids(e.config().vocab_size);
                (
                    "synthetic xsmall".to_string(),
                    e.config().forward_flops_per_token(a.seq_len),
                    e.config().head_dim,
                    Box::new(move || e.encode_ids(&ids).map(|_| ()).map_err(Into::into)),
                )
            }
            (None, None) => bail!("give --model DIR or --synthetic xsmall"),
        };
    for _ in 0..a.warmup {
        run()?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    loop {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let done = match a.iters {
            Some(n) => times.len() >= n,
            None => times.len() >= 5 && start.elapsed().as_secs_f64() > 3.0,
        };
        if done {
            break;
        }
    }
    let (median, mean, min) = summarize(&mut times);
    let tokens = (a.batch_size * a.seq_len) as f64;
    let threads = a.threads.unwrap_or_else(rayon::current_num_threads);
    println!(
        "{label} on {device} ({threads} threads): batch {} x {} tokens, {} iterations",
        a.batch_size,
        a.seq_len,
        times.len()
    );
    let cpu_kernels = cpu_kernels(device, precision, head_dim);
    if let Some(k) = &cpu_kernels {
        println!("cpu kernels: {k}");
    }
    println!("median {median:.3} ms   mean {mean:.3} ms   min {min:.3} ms");
    let model_tflops = tokens * flops_per_token / (median / 1e3) / 1e12;
    println!(
        "{:.0} tokens/s   {:.1} sentences/s   {model_tflops:.3} TFLOP/s of encoder math ({:.1} MFLOP/token)",
        tokens / (median / 1e3),
        a.batch_size as f64 / (median / 1e3),
        flops_per_token / 1e6
    );
    let device_mem = device_memory(device);
    if let Some((used, total)) = device_mem {
        println!(
            "device memory in use after the run: {:.0} MiB of {:.0} MiB (whole device)",
            used as f64 / 1048576.0,
            total as f64 / 1048576.0
        );
    }
    if a.json {
        let v = serde_json::json!({
            "model": label,
            "device": device.to_string(),
            "dtype": precision.to_string(),
            "threads": threads,
            "batch_size": a.batch_size,
            "seq_len": a.seq_len,
            "iters": times.len(),
            "median_ms": median,
            "mean_ms": mean,
            "min_ms": min,
            "tokens_per_s": tokens / (median / 1e3),
            "sentences_per_s": a.batch_size as f64 / (median / 1e3),
            "flops_per_token": flops_per_token,
            "model_tflops": model_tflops,
            "device_mem_used_mib": device_mem.map(|(u, _)| u as f64 / 1048576.0),
            "cpu_kernels": cpu_kernels,
        });
        println!("{v}");
    }
    Ok(())
}

/// Which CPU GEMM kernels a forward at `precision` runs (the SIMD level; for bf16, the weight
/// form this CPU gets: AMX tiles, `avx512_bf16` dot products or widened storage; for int8,
/// AMX-INT8 or VNNI); `None` on a GPU.
fn cpu_kernels(device: Device, precision: Precision, head_dim: usize) -> Option<String> {
    use deberta_embed::backend::cpu::gemm::{
        bf16_gemm_form, int8_gemm_form, simd_level, Bf16Form, Int8Form,
    };
    if device != Device::Cpu {
        return None;
    }
    let bf16 = match (precision, bf16_gemm_form()) {
        (Precision::BF16, Bf16Form::Tiles) => ", bf16 weights on AMX tiles",
        (Precision::BF16, Bf16Form::Dot) => ", bf16 weights as avx512_bf16 dot products",
        (Precision::BF16, Bf16Form::Storage) => ", bf16 weights widened to f32",
        (Precision::BF16, Bf16Form::F32) => {
            ", bf16 requested but weights kept f32 (every bf16 kernel is slower on this CPU)"
        }
        _ => match (precision, int8_gemm_form()) {
            (Precision::INT8, Int8Form::Tiles) => ", int8 weights on AMX-INT8 tiles",
            (Precision::INT8, Int8Form::Vnni) => ", int8 weights as AVX512-VNNI dot products",
            (Precision::INT8, Int8Form::AvxVnni) => ", int8 weights as AVX-VNNI dot products",
            (Precision::INT8, Int8Form::F32) => {
                ", int8 requested but weights kept f32 (no AMX-INT8, AVX512-VNNI or AVX-VNNI on this CPU)"
            }
            _ => "",
        },
    };
    let attention = if deberta_embed::backend::cpu::attention::tiles_for(precision, head_dim) {
        ", attention on AMX-BF16 tiles"
    } else {
        ""
    };
    Some(format!("gemm {}{bf16}{attention}", simd_level()))
}

/// (used, total) bytes of the GPU's memory, all processes included; `None` on the CPU.
fn device_memory(device: Device) -> Option<(usize, usize)> {
    match device {
        Device::Cpu => None,
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => deberta_embed::backend::cuda::device::memory_in_use().ok(),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => None,
    }
}
