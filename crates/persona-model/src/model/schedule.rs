//! CPU scheduling around burn's gaps, kept out of the model's math: a pass
//! split into row groups run concurrently (burn-flex runs element-wise ops
//! on one thread), whole passes run on a rayon worker with a spinning
//! partner, and few-row products split by output columns (gemm runs them
//! on one thread). A GPU runs every pass whole; none of this applies there.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Tensor;
use rayon::prelude::*;

use super::{ForwardArgs, ForwardOutput, Logits, Model};
use crate::cache::KvCache;
use crate::error::Result;
use crate::lora::Lora;
use crate::sites::{Batch, Steering};

impl Model {
    /// A pass over `batch`, split into row groups when that is faster
    /// ([`Model::row_groups`]): each group is one [`Model::pass`] on its
    /// own thread; the outputs (and a fresh cache) are joined in row order.
    pub(super) fn run_pass(&self, batch: &Batch, args: ForwardArgs<'_>) -> Result<ForwardOutput> {
        let groups = self.row_groups(batch, &args);
        if groups.len() < 2 {
            return on_the_pool(|| self.pass(batch, args));
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
                // Steerings of some batch rows only are renumbered per group.
                let steering: Vec<Steering> = args
                    .steering
                    .iter()
                    .filter_map(|st| st.for_row_range(rows.clone()))
                    .collect();
                let out = self.pass(
                    &batch.rows(rows),
                    ForwardArgs {
                        cache: cache.as_mut(),
                        steering: &steering,
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
    /// the whole block (prefill ~40% faster on 2 cores: benches/RESULTS.md).
    /// Each row's values are computed the
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
/// partner steals the other: a decoding step then makes far fewer context
/// switches and runs markedly faster (benches/RESULTS.md). The partner
/// spins only while this pass runs and does
/// any of the pool's work meanwhile; passes started on a worker (the
/// trainer's row groups) do not get one, as their partner has its own
/// work. Values do not change.
pub(super) fn on_the_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
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
pub(super) fn matmul_few_rows(x: Tensor<2>, w: &Tensor<2>, blocks_per_thread: usize) -> Tensor<2> {
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
