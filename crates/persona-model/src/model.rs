//! The decoder (LLaMA / Qwen2 family) in burn: one implementation whose
//! forward takes the KV cache, the steering to apply and the sites to
//! capture as arguments, and returns logits plus what was captured.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::cache::{KvCache, append_positions};
use crate::config::ModelConfig;
use crate::elementwise;
use crate::error::{ModelError, Result};
use crate::lora::{Lora, LoraDropout, Target};
use crate::packed::{PACKED_MAX_ROWS, PackedWeight};
use crate::sites::{
    Batch, CaptureRequest, Reduction, Role, SteerOp, Steering, position_mask, reduction_weights,
};
use crate::weights::{HostTensor, WeightMap, check_strict};

/// Which logits a forward call computes. The LM head is a large matmul
/// (vocab 49152 for SmolLM2): skip it when only activations are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// `[n_rows, seq_len, vocab]`.
    All,
    /// `[n_rows, 1, vocab]` at each row's last non-padding token.
    Last,
    /// `[1, n, vocab]` at the `n` positions that predict a response token
    /// ([`Batch::scored_positions`], same order): all a loss or a response
    /// likelihood needs, and much cheaper than `All` when prompts are long
    /// (the LM head and its softmax dominate a training step). The batch
    /// must hold at least one response token.
    Scored,
    /// None; the forward also stops after the highest captured row.
    None,
}

/// Arguments of one forward call besides the tokens.
pub struct ForwardArgs<'a> {
    /// Cache to read past keys/values from and append this chunk's to.
    pub cache: Option<&'a mut KvCache>,
    pub steering: &'a [Steering],
    pub capture: &'a CaptureRequest,
    pub logits: Logits,
    /// LoRA adapters to add to the projections (training, or an unmerged
    /// fine-tuned model).
    pub lora: Option<&'a Lora>,
    /// Dropout on the LoRA branches' inputs: training forwards only.
    pub lora_dropout: Option<LoraDropout>,
}

impl<'a> ForwardArgs<'a> {
    /// No cache, no steering, no capture, all logits.
    pub fn plain() -> ForwardArgs<'static> {
        ForwardArgs {
            cache: None,
            steering: &[],
            capture: &NO_CAPTURE,
            logits: Logits::All,
            lora: None,
            lora_dropout: None,
        }
    }

    /// A capture-only pass: no cache, steering or adapters, no logits (the
    /// pass stops after the highest captured row).
    pub fn capture(capture: &'a CaptureRequest, lora: Option<&'a Lora>) -> Self {
        ForwardArgs {
            cache: None,
            steering: &[],
            capture,
            logits: Logits::None,
            lora,
            lora_dropout: None,
        }
    }

    /// A generation step: continue `cache`, last-position logits, no capture.
    pub fn decode(cache: &'a mut KvCache, steering: &'a [Steering]) -> Self {
        ForwardArgs {
            cache: Some(cache),
            steering,
            capture: &NO_CAPTURE,
            logits: Logits::Last,
            lora: None,
            lora_dropout: None,
        }
    }
}

static NO_CAPTURE: CaptureRequest = CaptureRequest::none();

/// What a forward call returns.
pub struct ForwardOutput {
    /// See [`Logits`]; `None` when not asked for.
    pub logits: Option<Tensor<3>>,
    /// `(row, reduction)` -> `[n_rows, d_model]` for the pooled reductions.
    pub captured: BTreeMap<(usize, Reduction), Tensor<2>>,
    /// `row` -> `[n_rows, seq_len, d_model]` for [`Reduction::Full`].
    pub full: BTreeMap<usize, Tensor<3>>,
    /// Tokens each row averaged over, per reduction (0 = empty set: the
    /// captured row is zero and must not be used as a mean).
    pub counts: BTreeMap<Reduction, Vec<usize>>,
}

impl ForwardOutput {
    /// Joins the outputs of consecutive row groups of one batch.
    fn concat_rows(parts: Vec<ForwardOutput>, logits: Logits) -> ForwardOutput {
        let mut logit_parts = Vec::new();
        let mut captured: BTreeMap<(usize, Reduction), Vec<Tensor<2>>> = BTreeMap::new();
        let mut full: BTreeMap<usize, Vec<Tensor<3>>> = BTreeMap::new();
        let mut counts: BTreeMap<Reduction, Vec<usize>> = BTreeMap::new();
        for p in parts {
            logit_parts.extend(p.logits);
            for (k, t) in p.captured {
                captured.entry(k).or_default().push(t);
            }
            for (k, t) in p.full {
                full.entry(k).or_default().push(t);
            }
            for (k, c) in p.counts {
                counts.entry(k).or_default().extend(c);
            }
        }
        // Scored logits are `[1, n, vocab]` in row-major order: rows follow
        // along dim 1. Every other output has rows on dim 0.
        let logit_dim = if logits == Logits::Scored { 1 } else { 0 };
        ForwardOutput {
            logits: (!logit_parts.is_empty()).then(|| Tensor::cat(logit_parts, logit_dim)),
            captured: captured
                .into_iter()
                .map(|(k, ts)| (k, Tensor::cat(ts, 0)))
                .collect(),
            full: full
                .into_iter()
                .map(|(k, ts)| (k, Tensor::cat(ts, 0)))
                .collect(),
            counts,
        }
    }
}

/// Copies a tensor's values to the host.
pub fn host_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Data(format!("{e:?}")))
}

/// A linear projection stored as `[d_in, d_out]` so the forward is `x @ W`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor<1>>,
}

/// A frozen `[d_in, d_out]` weight. Products with few rows (decoding) on
/// the CPU use a panel-packed copy, built on the first such product and
/// shared by clones of the model: 0.625 bytes per parameter for dequantised
/// Q4_1 weights, 1.125 for Q8_0, 4 for any other (SmolLM2 from its GGUF:
/// 98 MB); see [`crate::packed`]. All other products use burn's matmul.
#[derive(Debug, Clone)]
pub(crate) struct Weight {
    tensor: Tensor<2>,
    packed: Arc<OnceLock<Option<PackedWeight>>>,
}

impl Weight {
    fn new(tensor: Tensor<2>) -> Self {
        Self {
            tensor,
            packed: Arc::default(),
        }
    }

    /// `x @ W`; `blocks_per_thread` as in [`matmul_few_rows`], for CPUs
    /// without the packed kernel.
    ///
    /// # Shapes
    /// `x`: `[m, d_in]` -> `[m, d_out]`
    fn matmul(&self, x: Tensor<2>, blocks_per_thread: usize) -> Tensor<2> {
        let [m, _] = x.dims();
        // Not on an autodiff device: the packed product is computed on the
        // host, outside burn's graph.
        if m <= PACKED_MAX_ROWS
            && !x.is_autodiff()
            && crate::device::is_cpu(&x.device())
            && let Some(y) = self
                .packed
                .get_or_init(|| PackedWeight::new(&self.tensor))
                .as_ref()
                .and_then(|p| p.matmul(&x))
        {
            return y;
        }
        matmul_few_rows(x, &self.tensor, blocks_per_thread)
    }
}

/// Runs `f` (a forward pass) on a rayon worker, with another worker kept
/// awake until it returns; inline when already on a worker.
///
/// A pass forks to the pool several times per layer (each product, each
/// attention). Called from outside the pool, every fork would park the
/// caller's thread until the pool is done, and a worker that found nothing
/// to do for ~30 µs (a norm, RoPE, attention at batch 1) falls asleep and
/// takes ~10-20 µs to wake for the next product. On a worker, the pass
/// forks with `join`, starts on its own half at once, and a spinning
/// partner steals the other: a batch-16 decoding step made ~570 context
/// switches before, ~70 after, and decoding ran ~8% (batch 16) to ~40%
/// (batch 1) faster. The partner spins only while this pass runs and does
/// any of the pool's work meanwhile; passes started on a worker (the
/// trainer's row groups) do not get one, as their partner has its own
/// work. Values do not change.
fn on_the_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let caller = rayon::current_thread_index();
        let done = &done;
        s.spawn(move |_| {
            // Defensive: thieves take the oldest job (this one) first, so
            // the pass's own thread should only find it after the pass;
            // if it ever ran it earlier, spinning would wait for itself.
            if rayon::current_thread_index() == caller {
                return;
            }
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        });
        let out = f();
        done.store(true, Ordering::Release);
        out
    })
}

/// Products with at most this many rows are split by output columns over
/// the rayon threads (see [`matmul_few_rows`]).
const FEW_ROWS: usize = 4;

/// Narrowest column block of a split product. gemm sends products of at
/// most 16 x 16 outputs to a different kernel (another summation order);
/// blocks at least this wide keep every block on the kernel the whole
/// product would use, so the split is bit-identical.
const MIN_BLOCK_COLUMNS: usize = 288;

/// `x @ w`, with products of a few rows (batch-1 and small-batch decoding)
/// split into one block of output columns per rayon thread, run
/// concurrently and concatenated. The gemm crate under burn's CPU backend
/// runs a matrix-vector product (and small products below its threading
/// threshold) on one thread, which reads the weights at about half the
/// machine's memory bandwidth; decoding is bound by exactly that read.
/// Each output column is computed by the same kernel either way, so the
/// values do not change (see [`MIN_BLOCK_COLUMNS`]). Inputs on an autodiff
/// device and other devices than the CPU take the plain path.
///
/// # Shapes
/// `x`: `[m, k]`, `w`: `[k, n]` (may be a view) -> `[m, n]`
fn matmul_few_rows(x: Tensor<2>, w: &Tensor<2>, blocks_per_thread: usize) -> Tensor<2> {
    let [m, _] = x.dims();
    let [_, n] = w.dims();
    let blocks = column_blocks(m, n, blocks_per_thread);
    if blocks < 2 || x.is_autodiff() || !crate::device::is_cpu(&x.device()) {
        return x.matmul(w.clone());
    }
    let width = n.div_ceil(blocks);
    let outs: Vec<Tensor<2>> = (0..n.div_ceil(width))
        .into_par_iter()
        .map(|b| {
            let start = b * width;
            x.clone()
                .matmul(w.clone().narrow(1, start, width.min(n - start)))
        })
        .collect();
    Tensor::cat(outs, 1)
}

/// How many column blocks [`matmul_few_rows`] splits an `[m, k] @ [k, n]`
/// product into (1 = not split).
fn column_blocks(m: usize, n: usize, blocks_per_thread: usize) -> usize {
    if m > FEW_ROWS {
        return 1;
    }
    (rayon::current_num_threads() * blocks_per_thread)
        .min(n / MIN_BLOCK_COLUMNS)
        .max(1)
}

impl Linear {
    /// # Shapes
    /// `x`: `[n, d_in]` -> `[n, d_out]`
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = self.weight.matmul(x, 1);
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<2>(),
            None => y,
        }
    }
}

/// One decoder block; field names follow the HF checkpoint keys. HF's
/// `q_proj`/`k_proj`/`v_proj` are concatenated at load into one `qkv_proj`
/// (output columns `[q | k | v]`), and `gate_proj`/`up_proj` into
/// `gate_up_proj` (`[gate | up]`): one matmul instead of three or two.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub input_layernorm: Tensor<1>,
    pub qkv_proj: Linear,
    pub o_proj: Linear,
    pub post_attention_layernorm: Tensor<1>,
    pub gate_up_proj: Linear,
    pub down_proj: Linear,
}

/// Rotary embeddings in HF's rotate-half layout, with the sign of
/// rotate-half folded into `sin` (first half negated) so that
/// `rope(x) = x * cos + swap_halves(x) * sin` ([`elementwise::rope`]).
///
/// The angles are computed on the host in f64 for the positions a forward
/// uses, not stored as a `[max_positions, head_dim]` table: a table sized
/// by the config's context would take memory in proportion to a number the
/// file chooses, and a forward needs only `b * s` positions (values are the
/// same either way).
#[derive(Debug, Clone)]
struct Rope {
    /// `theta^(-2i / head_dim)` for `i < head_dim / 2`.
    inv_freq: Vec<f64>,
}

impl Rope {
    fn new(cfg: &ModelConfig) -> Self {
        let hd = cfg.head_dim;
        let inv_freq = (0..hd / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / hd as f64))
            .collect();
        Self { inv_freq }
    }

    /// `(cos, sin)` for each position id, each `[positions.len(), head_dim]`
    /// row-major.
    fn tables(&self, positions: &[i64]) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let hd = 2 * half;
        let mut cos = vec![0f32; positions.len() * hd];
        let mut sin = vec![0f32; positions.len() * hd];
        for (j, &p) in positions.iter().enumerate() {
            for (i, f) in self.inv_freq.iter().enumerate() {
                let a = p as f64 * f;
                let at = j * hd;
                cos[at + i] = a.cos() as f32;
                cos[at + half + i] = a.cos() as f32;
                sin[at + i] = -a.sin() as f32;
                sin[at + half + i] = a.sin() as f32;
            }
        }
        (cos, sin)
    }
}

/// A loaded decoder.
#[derive(Debug, Clone)]
pub struct Model {
    pub config: ModelConfig,
    embed_tokens: Tensor<2>,
    layers: Vec<Block>,
    norm: Tensor<1>,
    /// `[d_model, vocab]`. When tied to `embed_tokens` this is a transposed
    /// copy (113 MB for SmolLM2): gemm streams a contiguous `[d, vocab]`
    /// matrix faster than a transposed view of `[vocab, d]` (measured with 16
    /// rows: 10.1 vs 14.9 ms; 64 rows: 25 vs 34 ms).
    lm_head: Weight,
    rope: Rope,
    device: Device,
}

fn host_to_tensor<const D: usize>(t: &HostTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

/// `[out_j, in]` host weights -> one `[in, sum_j out_j]` tensor: the
/// transposed weights side by side, so `x @ W` gives their outputs concatenated.
fn transposed_concat(parts: &[&HostTensor], device: &Device) -> Tensor<2> {
    let inp = parts[0].shape[1];
    let total: usize = parts.iter().map(|t| t.shape[0]).sum();
    let mut data = vec![0f32; inp * total];
    data.par_chunks_mut(total).enumerate().for_each(|(i, row)| {
        let mut col = 0;
        for t in parts {
            let out = t.shape[0];
            for o in 0..out {
                row[col + o] = t.data[o * inp + i];
            }
            col += out;
        }
    });
    Tensor::from_data(TensorData::new(data, [inp, total]), device)
}

/// Concatenated biases, if the projections have them.
fn concat_bias(parts: &[Option<&HostTensor>], device: &Device) -> Option<Tensor<1>> {
    let parts: Option<Vec<&HostTensor>> = parts.iter().copied().collect();
    parts.map(|ps| {
        let data: Vec<f32> = ps.iter().flat_map(|t| t.data.iter().copied()).collect();
        let n = data.len();
        Tensor::from_data(TensorData::new(data, [n]), device)
    })
}

impl Model {
    /// Builds the model from HF-named weights; strict about keys and shapes.
    pub fn from_weights(config: ModelConfig, w: &WeightMap, device: &Device) -> Result<Self> {
        check_strict(&config, w)?;
        if crate::device::is_cpu(device) {
            crate::device::tune_cpu_matmul();
        }
        // Several HF projections fused into one linear map.
        let lin = |names: &[String]| Linear {
            weight: Weight::new(transposed_concat(
                &names
                    .iter()
                    .map(|n| &w[&format!("{n}.weight")])
                    .collect::<Vec<_>>(),
                device,
            )),
            bias: concat_bias(
                &names
                    .iter()
                    .map(|n| w.get(&format!("{n}.bias")))
                    .collect::<Vec<_>>(),
                device,
            ),
        };
        let layers = (0..config.n_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let attn = |m: &str| format!("{p}.self_attn.{m}");
                let mlp = |m: &str| format!("{p}.mlp.{m}");
                Block {
                    input_layernorm: host_to_tensor(
                        &w[&format!("{p}.input_layernorm.weight")],
                        device,
                    ),
                    qkv_proj: lin(&[attn("q_proj"), attn("k_proj"), attn("v_proj")]),
                    o_proj: lin(&[attn("o_proj")]),
                    post_attention_layernorm: host_to_tensor(
                        &w[&format!("{p}.post_attention_layernorm.weight")],
                        device,
                    ),
                    gate_up_proj: lin(&[mlp("gate_proj"), mlp("up_proj")]),
                    down_proj: lin(&[mlp("down_proj")]),
                }
            })
            .collect();
        let lm_head = Weight::new(transposed_concat(
            &[&w[if config.tie_embeddings {
                "model.embed_tokens.weight"
            } else {
                "lm_head.weight"
            }]],
            device,
        ));
        Ok(Self {
            rope: Rope::new(&config),
            embed_tokens: host_to_tensor(&w["model.embed_tokens.weight"], device),
            norm: host_to_tensor(&w["model.norm.weight"], device),
            layers,
            lm_head,
            config,
            device: device.clone(),
        })
    }

    #[cfg(test)]
    pub(crate) fn embed_tokens_for_tests(&self) -> &Tensor<2> {
        &self.embed_tokens
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The packed copies of the weights that few-row products (decoding)
    /// use on this CPU, by format (`"Q4_1"`, `"Q8_0"` or `"F32"`): how many
    /// weight matrices and how many bytes. Empty until the first such
    /// product, and on CPUs without AVX-512F (see [`crate::packed`]).
    pub fn packed_weights(&self) -> BTreeMap<&'static str, (usize, usize)> {
        let mut formats = BTreeMap::new();
        let weights = self.layers.iter().flat_map(|l| {
            [&l.qkv_proj, &l.o_proj, &l.gate_up_proj, &l.down_proj].map(|lin| &lin.weight)
        });
        for w in weights.chain([&self.lm_head]) {
            if let Some(Some(p)) = w.packed.get() {
                let entry = formats.entry(p.format().name()).or_insert((0, 0));
                entry.0 += 1;
                entry.1 += p.bytes();
            }
        }
        formats
    }

    /// Number of residual rows: `n_layers + 1`.
    pub fn n_rows(&self) -> usize {
        self.config.n_rows()
    }

    fn rms_norm(&self, x: Tensor<2>, weight: &Tensor<1>) -> Tensor<2> {
        let var = x.clone().square().mean_dim(1);
        let inv = var.add_scalar(self.config.rms_eps).sqrt().recip();
        x * inv * weight.clone().unsqueeze::<2>()
    }

    /// The final RMSNorm, applied to a raw row-`n_layers` activation `[n, d_model]`
    /// (HF's last `hidden_states` entry is this, not the raw block output).
    pub fn final_norm(&self, x: Tensor<2>) -> Tensor<2> {
        self.rms_norm(x, &self.norm)
    }

    /// Checks steering rows and widths against this model.
    pub fn check_steering(&self, steering: &[Steering]) -> Result<()> {
        for s in steering {
            s.check_coef()?;
            if s.row > self.config.n_layers {
                return Err(ModelError::LayerOutOfRange {
                    row: s.row,
                    max: self.config.n_layers,
                });
            }
            if s.width() != self.config.d_model {
                return Err(ModelError::VectorWidth {
                    found: s.width(),
                    expected: self.config.d_model,
                });
            }
        }
        Ok(())
    }

    /// Runs the decoder over one chunk of tokens.
    ///
    /// With a cache, the chunk continues the cached sequences (one row per
    /// cached row); its keys/values are appended. Position ids count real
    /// tokens only, so a left-padded row starts at position 0 like an
    /// unpadded one.
    ///
    /// # Shapes
    /// `batch`: `[n_rows, seq_len]` tokens; see [`ForwardOutput`] for outputs.
    pub fn forward(&self, batch: &Batch, args: ForwardArgs<'_>) -> Result<ForwardOutput> {
        let groups = self.row_groups(batch, &args);
        if groups.len() < 2 {
            return on_the_pool(|| self.forward_rows(batch, args));
        }
        // A fresh cache (the prompt pass of generation) is filled per group
        // and joined.
        let fresh_cache = args
            .cache
            .as_ref()
            .map(|c| KvCache::with_capacity(c.reserve));
        let parts = groups
            .into_par_iter()
            .map(|rows| {
                let mut cache = fresh_cache.clone();
                let out = self.forward_rows(
                    &batch.rows(rows),
                    ForwardArgs {
                        cache: cache.as_mut(),
                        steering: args.steering,
                        capture: args.capture,
                        logits: args.logits,
                        lora: args.lora,
                        lora_dropout: None,
                    },
                )?;
                Ok((out, cache))
            })
            .collect::<Result<Vec<_>>>()?;
        let (outs, caches): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
        if let Some(cache) = args.cache {
            *cache = KvCache::concat_rows(caches.into_iter().flatten().collect());
        }
        Ok(ForwardOutput::concat_rows(outs, args.logits))
    }

    /// Row ranges to run concurrently ([`Batch::thread_groups`]); a single
    /// range when the pass must run whole.
    ///
    /// Burn's CPU backend runs element-wise ops (norms, SiLU, RoPE, softmax)
    /// on one thread; only matmuls use both cores. Splitting an inference
    /// pass into row groups, one per thread, keeps every core busy through
    /// the whole block: prefill 8 x 128 measured 460-570 -> 660-760
    /// tokens/s on the 2-core machine. Each row's values are computed the
    /// same way (rows never interact), up to the summation order gemm
    /// chooses for a product's size (~1e-6). Not split: passes on a GPU,
    /// passes that continue
    /// a cache (decoding one token per row: the weights would be read once
    /// per group; a fresh cache is split and joined) and training passes
    /// (tracked adapters or dropout: one autodiff graph; the trainer splits
    /// its own micro-batches).
    pub(crate) fn row_groups(
        &self,
        batch: &Batch,
        args: &ForwardArgs<'_>,
    ) -> Vec<std::ops::Range<usize>> {
        if args.cache.as_ref().is_some_and(|c| !c.is_empty())
            || args.lora_dropout.is_some()
            || args.lora.is_some_and(Lora::is_tracked)
        {
            return std::iter::once(0..batch.n_rows).collect();
        }
        batch.thread_groups(&self.device, args.logits == Logits::Scored)
    }

    /// [`Model::forward`] over all rows at once.
    pub(crate) fn forward_rows(
        &self,
        batch: &Batch,
        args: ForwardArgs<'_>,
    ) -> Result<ForwardOutput> {
        let cfg = &self.config;
        let (b_n, s_n, d) = (batch.n_rows, batch.seq_len, cfg.d_model);
        self.check_steering(args.steering)?;
        if let Some(l) = args.lora
            && l.layers.len() != cfg.n_layers
        {
            return Err(ModelError::Input(format!(
                "LoRA adapters have {} layers but the model has {}",
                l.layers.len(),
                cfg.n_layers
            )));
        }
        for &row in &args.capture.rows {
            if row > cfg.n_layers {
                return Err(ModelError::LayerOutOfRange {
                    row,
                    max: cfg.n_layers,
                });
            }
        }
        if let Some(&bad) = batch.ids.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} >= vocab size {}",
                cfg.vocab_size
            )));
        }
        let scored = match args.logits {
            Logits::Scored => {
                let idx: Vec<i64> = batch
                    .scored_positions()
                    .into_iter()
                    .map(|(p, _)| p as i64)
                    .collect();
                if idx.is_empty() {
                    return Err(ModelError::Input(
                        "no response token to score: `Logits::Scored` needs a batch with a response"
                            .into(),
                    ));
                }
                idx
            }
            _ => Vec::new(),
        };
        let mut cache = args.cache;
        let past = cache.as_ref().map_or(0, |c| c.past_len());
        if let Some(c) = cache.as_ref()
            && !c.is_empty()
            && c.valid.len() != b_n
        {
            return Err(ModelError::Input(format!(
                "batch has {b_n} rows but the cache holds {}",
                c.valid.len()
            )));
        }
        let total = past + s_n;
        if total > cfg.max_positions {
            return Err(ModelError::Input(format!(
                "sequence of {total} tokens exceeds the model's context of {}",
                cfg.max_positions
            )));
        }

        // Host-side bookkeeping: key validity, position ids, attention mask.
        let mut key_valid: Vec<Vec<bool>> = (0..b_n)
            .map(|b| {
                cache
                    .as_ref()
                    .and_then(|c| c.valid.get(b).cloned())
                    .unwrap_or_default()
            })
            .collect();
        let mut pos_ids = vec![0i64; b_n * s_n];
        for b in 0..b_n {
            let mut next = cache.as_ref().map_or(0, |c| c.n_real(b));
            for (s, role) in batch.row_roles(b).iter().enumerate() {
                let real = *role != Role::Pad;
                pos_ids[b * s_n + s] = next.min(cfg.max_positions - 1) as i64;
                if real {
                    next += 1;
                }
                key_valid[b].push(real);
            }
        }
        // true = masked. A query may see key k if k is real and not in its
        // future; every query sees itself, so a padding query's softmax has
        // at least one entry (a fully masked row would give NaN, and NaN
        // values would leak into real rows through 0 * NaN in P @ V).
        // Repeated for the query heads that share a KV head (see `block`).
        let rep = cfg.n_heads / cfg.n_kv_heads;
        let mut mask = vec![false; b_n * rep * s_n * total];
        for (b, valid) in key_valid.iter().enumerate() {
            for q in 0..s_n {
                let qa = past + q;
                let row: Vec<bool> = (0..total)
                    .map(|k| k > qa || (!valid[k] && k != qa))
                    .collect();
                for r in 0..rep {
                    let at = ((b * rep + r) * s_n + q) * total;
                    mask[at..at + total].copy_from_slice(&row);
                }
            }
        }
        let dev = &self.device;
        let mask =
            Tensor::<4, Bool>::from_data(TensorData::new(mask, [b_n, 1, rep * s_n, total]), dev);
        let hd = cfg.head_dim;
        let (cos, sin) = self.rope.tables(&pos_ids);
        let cos = Tensor::<4>::from_data(TensorData::new(cos, [b_n, 1, s_n, hd]), dev);
        let sin = Tensor::<4>::from_data(TensorData::new(sin, [b_n, 1, s_n, hd]), dev);

        // Steering masks `[n, 1]` and capture weights `[b, r, s]`, built once.
        let steer_masks: Vec<Tensor<2>> = args
            .steering
            .iter()
            .map(|st| {
                let m = position_mask(&batch.roles, s_n, st.positions);
                Tensor::from_data(TensorData::new(m, [b_n * s_n, 1]), dev)
            })
            .collect();
        let mut counts = BTreeMap::new();
        let pooled: Vec<Reduction> = args
            .capture
            .reductions
            .iter()
            .copied()
            .filter(|r| *r != Reduction::Full)
            .collect();
        let pool_weights = if pooled.is_empty() || args.capture.rows.is_empty() {
            None
        } else {
            let mut w = Vec::with_capacity(b_n * pooled.len() * s_n);
            let per: Vec<Vec<f32>> = pooled
                .iter()
                .map(|r| {
                    let (w, c) = reduction_weights(&batch.roles, s_n, *r);
                    counts.insert(*r, c);
                    w
                })
                .collect();
            for b in 0..b_n {
                for p in &per {
                    w.extend_from_slice(&p[b * s_n..(b + 1) * s_n]);
                }
            }
            Some(Tensor::<3>::from_data(
                TensorData::new(w, [b_n, pooled.len(), s_n]),
                dev,
            ))
        };
        let last_needed_row = match args.logits {
            Logits::None => args.capture.rows.iter().copied().max().unwrap_or(0),
            _ => cfg.n_layers,
        };
        if cache.is_some() && last_needed_row != cfg.n_layers {
            return Err(ModelError::Input(
                "a forward with a KV cache must run every layer: ask for logits".into(),
            ));
        }

        let mut captured = BTreeMap::new();
        let mut full = BTreeMap::new();
        let ids = Tensor::<1, Int>::from_data(
            TensorData::new(
                batch.ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [b_n * s_n],
            ),
            dev,
        );
        // # (b*s, d)
        let mut h = self.embed_tokens.clone().select(0, ids);
        // The cache's key/value tensors are moved out (not cloned), so each
        // layer's `append_positions` can write in place; they go back below.
        let reserve = cache.as_ref().map_or(0, |c| c.reserve);
        let mut past_layers = cache.as_mut().map(|c| c.take_layers());
        let mut new_keys = Vec::new();
        let mut new_values = Vec::new();
        for row in 0..=last_needed_row {
            if row > 0 {
                let layer = &self.layers[row - 1];
                let cached = past_layers.as_mut().and_then(Iterator::next);
                let (out, k, v) = self.block(
                    layer,
                    (row - 1, args.lora, args.lora_dropout.as_ref()),
                    h,
                    [b_n, s_n],
                    &cos,
                    &sin,
                    &mask,
                    (past, reserve, cached),
                );
                h = out;
                new_keys.push(k);
                new_values.push(v);
            }
            for (st, m) in args
                .steering
                .iter()
                .zip(&steer_masks)
                .filter(|(st, _)| st.row == row)
            {
                let v = st.vector.clone().unsqueeze::<2>(); // # (1, d)
                h = match st.op {
                    SteerOp::Add { coef } => h + m.clone() * v.mul_scalar(coef),
                    SteerOp::Ablate => {
                        let proj = h.clone().matmul(v.clone().transpose()); // # (n, 1)
                        h - (proj * m.clone()) * v
                    }
                };
            }
            if args.capture.rows.contains(&row) {
                let h3 = h.clone().reshape([b_n, s_n, d]);
                if let Some(w) = &pool_weights {
                    // # (b, r, s) @ (b, s, d) -> (b, r, d)
                    let pooled_h = w.clone().matmul(h3.clone());
                    for (i, r) in pooled.iter().enumerate() {
                        captured.insert(
                            (row, *r),
                            pooled_h.clone().narrow(1, i, 1).reshape([b_n, d]),
                        );
                    }
                }
                if args.capture.reductions.contains(&Reduction::Full) {
                    full.insert(row, h3);
                }
            }
        }
        if let Some(c) = cache.as_mut() {
            c.keys = new_keys;
            c.values = new_values;
            c.valid = key_valid;
        }

        let logits = match args.logits {
            Logits::None => None,
            Logits::All => Some(self.lm_head(h).reshape([b_n, s_n, cfg.vocab_size])),
            Logits::Last => {
                let idx = (0..b_n)
                    .map(|b| (b * s_n + batch.last_token_index(b).unwrap_or(s_n - 1)) as i64)
                    .collect();
                Some(self.lm_head_at(h, idx).reshape([b_n, 1, cfg.vocab_size]))
            }
            Logits::Scored => {
                let n = scored.len();
                Some(self.lm_head_at(h, scored).reshape([1, n, cfg.vocab_size]))
            }
        };
        Ok(ForwardOutput {
            logits,
            captured,
            full,
            counts,
        })
    }

    /// # Shapes
    /// `h`: `[n, d_model]` -> `[n, vocab]`
    fn lm_head(&self, h: Tensor<2>) -> Tensor<2> {
        // The vocabulary is wide: two column blocks per thread balance better.
        self.lm_head.matmul(self.final_norm(h), 2)
    }

    /// The LM head at the flat positions `idx` of `h` only.
    ///
    /// # Shapes
    /// `h`: `[b*s, d_model]` -> `[idx.len(), vocab]`
    fn lm_head_at(&self, h: Tensor<2>, idx: Vec<i64>) -> Tensor<2> {
        let n = idx.len();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &self.device);
        self.lm_head(h.select(0, idx))
    }

    /// One pre-norm block. `(past, reserve, cached)`: the number of cached
    /// positions, the positions to make room for when the cache tensors
    /// are first made ([`KvCache::with_capacity`]), and this layer's cached
    /// key/value tensors (none for an empty cache).
    /// Returns the new residual and the key/value tensors with this
    /// chunk's positions written after the cached ones.
    ///
    /// # Shapes
    /// `h`: `[b*s, d]`; `cos`/`sin`: `[b, 1, s, hd]`; `mask`: `[b, 1, rep*s, past+s]`;
    /// cached k/v: `[b, kv_heads, capacity, hd]` (first `past` in use).
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        layer: &Block,
        (index, lora, dropout): (usize, Option<&Lora>, Option<&LoraDropout>),
        h: Tensor<2>,
        [b_n, s_n]: [usize; 2],
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &Tensor<4, Bool>,
        (past, reserve, cached): (usize, usize, Option<(Tensor<4>, Tensor<4>)>),
    ) -> (Tensor<2>, Tensor<4>, Tensor<4>) {
        let cfg = &self.config;
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let x = self.rms_norm(h.clone(), &layer.input_layernorm);
        let (q_w, kv_w) = (nh * hd, nkv * hd);
        // The frozen projection plus, when adapted, its LoRA branch.
        let delta =
            |t: Target, x: &Tensor<2>| lora.and_then(|l| l.delta(index, t, x.clone(), dropout));
        let plus = |base: Tensor<2>, d: Option<Tensor<2>>| match d {
            Some(d) => base + d,
            None => base,
        };
        let adapt = |t: Target, x: &Tensor<2>, base: Tensor<2>| plus(base, delta(t, x));
        let qkv = layer.qkv_proj.forward(x.clone()); // # (b*s, q_w + 2 kv_w)
        let q = adapt(Target::Q, &x, qkv.clone().narrow(1, 0, q_w));
        let k = adapt(Target::K, &x, qkv.clone().narrow(1, q_w, kv_w));
        let v = adapt(Target::V, &x, qkv.narrow(1, q_w + kv_w, kv_w));
        let heads = |t: Tensor<2>, n: usize| t.reshape([b_n, s_n, n, hd]).swap_dims(1, 2); // # (b, n, s, hd)
        let q = elementwise::rope(heads(q, nh), cos, sin);
        let k = elementwise::rope(heads(k, nkv), cos, sin);
        let (k_past, v_past) = cached.unzip();
        let (k_cache, k) = append_positions(k_past, past, reserve, k); // k: # (b, nkv, past+s, hd)
        let (v_cache, v) = append_positions(v_past, past, reserve, heads(v, nkv));
        // Grouped-query attention without copying K/V: query heads are
        // ordered kv_head * rep + r, so the `rep` query heads that share a KV
        // head stack along the sequence axis. `mask` is laid out to match:
        // `[b, 1, rep * s, past + s]`.
        let rep = nh / nkv;
        let q = q.reshape([b_n, nkv, rep * s_n, hd]);
        let attn = attention(
            q,
            k,
            v,
            Some(mask.clone()),
            None,
            AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: false,
            },
        ); // # (b, nkv, rep*s, hd) == (b, nh, s, hd)
        let attn = attn
            .reshape([b_n, nh, s_n, hd])
            .swap_dims(1, 2)
            .reshape([b_n * s_n, nh * hd]);
        let h = h + adapt(Target::O, &attn, layer.o_proj.forward(attn.clone()));
        let x = self.rms_norm(h.clone(), &layer.post_attention_layernorm);
        let gate_up = layer.gate_up_proj.forward(x.clone()); // # (b*s, 2 ff)
        let ff = cfg.d_ff;
        // Adapted gate or up: add the branches to the halves first.
        let act = match (delta(Target::Gate, &x), delta(Target::Up, &x)) {
            (None, None) => elementwise::swiglu(gate_up, ff),
            (gate_delta, up_delta) => {
                let gate = plus(gate_up.clone().narrow(1, 0, ff), gate_delta);
                silu(gate) * plus(gate_up.narrow(1, ff, ff), up_delta)
            }
        };
        let mlp = adapt(Target::Down, &act, layer.down_proj.forward(act.clone()));
        (h + mlp, k_cache, v_cache)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use super::{column_blocks, matmul_few_rows, on_the_pool};
    use crate::testing::test_device;

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    #[test]
    fn column_split_matmul_is_bit_identical_to_the_plain_product() {
        let dev = test_device();
        // Four blocks per thread (of 300 columns): split even on a one-thread pool.
        for m in [1, 3] {
            assert_eq!(column_blocks(m, 1200, 4), 4);
            let x = Tensor::<2>::random([m, 96], Distribution::Default, &dev);
            let w = Tensor::<2>::random([96, 1200], Distribution::Default, &dev);
            let split = host(matmul_few_rows(x.clone(), &w, 4));
            assert_eq!(split, host(x.clone().matmul(w.clone())), "m = {m}");
            // A transposed view, as the tied LM head uses.
            let wt = Tensor::<2>::random([1200, 96], Distribution::Default, &dev);
            let split = host(matmul_few_rows(x.clone(), &wt.clone().transpose(), 4));
            assert_eq!(split, host(x.matmul(wt.transpose())), "m = {m}, view");
        }
        assert_eq!(column_blocks(5, 1200, 4), 1, "more rows than FEW_ROWS");
    }

    /// A pass run through `on_the_pool` returns its value when called
    /// from outside the pool (also by several threads at once, whose passes
    /// and keep-awake jobs interleave on the workers) and when called on a
    /// worker of pools of 1-3 threads; nested forks have their halves
    /// stolen or not. A keep-awake job that outlived its pass would hang
    /// this test.
    #[test]
    fn passes_on_the_pool_return_their_value() {
        use rayon::prelude::*;
        let pass = || -> u64 {
            (0..64u64)
                .map(|i| (0..1000u64).into_par_iter().map(|j| i * j).sum::<u64>())
                .sum()
        };
        let want: u64 = (0..64u64).map(|i| i * 499_500).sum();
        assert_eq!(on_the_pool(pass), want, "from outside the pool");
        let concurrent: Vec<u64> = std::thread::scope(|s| {
            let callers: Vec<_> = (0..3).map(|_| s.spawn(|| on_the_pool(pass))).collect();
            callers.into_iter().map(|c| c.join().unwrap()).collect()
        });
        assert_eq!(concurrent, vec![want; 3], "three callers at once");
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let on_workers = pool.install(|| {
                (0..4)
                    .into_par_iter()
                    .map(|_| on_the_pool(pass))
                    .collect::<Vec<_>>()
            });
            assert_eq!(on_workers, vec![want; 4], "{threads} threads, on workers");
        }
    }
}
