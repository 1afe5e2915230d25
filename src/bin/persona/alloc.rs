//! The process allocator: mimalloc, told to keep the memory it frees.
//!
//! burn allocates a fresh buffer for every tensor op. glibc hands large
//! buffers back to the kernel each time, and mimalloc by default also
//! returns ("purges") freed memory after a delay; either way the next
//! buffer arrives as fresh pages that the kernel must zero (with
//! transparent huge pages, 2 MiB at a time), a large share of a LoRA
//! training step in `perf`. Keeping freed memory for reuse removes that;
//! the process's resident memory stays at its peak instead (which is what
//! it is sized for anyway). The measurements are in benches/RESULTS.md.
//! (Shared by the `persona` binary and `benches/runtime.rs`.)

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (the bundled
/// version; `libmimalloc-sys` does not export this constant). The test
/// below checks that this index holds the purge delay's documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the kernel. Call first
/// thing in `main`.
pub fn keep_freed_memory() {
    // SAFETY: sets one numeric option; called before any other thread starts
    // (mimalloc documents `mi_option_set` as not thread-safe).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn purge_delay_option_index_is_right() {
        // The documented default of mimalloc v3's purge delay (options.c),
        // unless the environment overrides it.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads one option.
            let default = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
            assert_eq!(
                default,
                1000,
                "option index {} is not the purge delay",
                super::MI_OPTION_PURGE_DELAY
            );
        }
    }
}
