//! The global allocator of every service binary: mimalloc, told to keep the memory it frees.
//!
//! Each study allocates a few large buffers (the 157 MB HU volume of a 300-slice study, the
//! 221 MB CT-CLIP tensor, decoded slices) and frees them when the study ends. glibc's malloc
//! returns blocks that large to the kernel at once, and mimalloc purges freed memory after a
//! second by default, so the next study touches fresh pages: a page fault and the kernel zeroing
//! each 4 KiB page. On the 2-core reference machine that was 0.3-0.4 s of system CPU per study in
//! every model service (bench/load, README "Whole stack overhead"). Keeping freed memory for reuse
//! (purge delay -1) removes it; the cost is that a service's resident memory stays at its
//! high-water mark between studies, which its memory limit has to allow for anyway.
//!
//! Each binary declares `#[global_allocator] static ALLOCATOR: ct_service::alloc::Allocator =
//! ct_service::alloc::Allocator;` and calls [`configure`] first thing in `main`. An operator's
//! `MIMALLOC_PURGE_DELAY` (milliseconds; -1 never, 0 at once) wins over the default.
//!
//! The workspace denies `unsafe` code; this module is its one exception: two FFI calls that
//! read and store a mimalloc option value.
#![allow(unsafe_code)]

/// The allocator type to install with `#[global_allocator]`.
pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (include/mimalloc.h): libmimalloc-sys
/// does not export it as a constant. [`tests::purge_delay_option_index_matches_mimalloc`] checks
/// the index against the option's built-in default, so a mimalloc upgrade that moves it fails CI.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Purge delay of the services: never give freed memory back (see the module docs).
pub const PURGE_DELAY_MS: i64 = -1;

/// Applies the services' allocator settings unless the environment sets them. Call it at the
/// start of `main`, before threads are spawned (mimalloc's option setters are not thread-safe).
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: plain store of an option value; called before the process spawns threads.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS as _) };
    }
}

/// The purge delay in effect, in milliseconds (-1: never).
pub fn purge_delay_ms() -> i64 {
    // SAFETY: plain read of an option value.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_option_index_matches_mimalloc() {
        // mimalloc v3 defaults: purge_delay (index 15) 1000 ms and its neighbours os_tag (18)
        // 100 and max_errors (19) 32. All three must match, or the option table moved.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the environment overrides the default this test reads
        }
        // SAFETY: plain reads of option values.
        let got = unsafe {
            [MI_OPTION_PURGE_DELAY, 18, 19].map(|o| libmimalloc_sys::mi_option_get(o) as i64)
        };
        assert_eq!(got, [1000, 100, 32], "mimalloc's option indices changed: update MI_OPTION_PURGE_DELAY");
        configure();
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
    }
}
