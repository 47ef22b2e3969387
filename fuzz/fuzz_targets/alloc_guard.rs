//! The global allocator of the fuzz targets: the system one, aborting on any single allocation
//! over `LIMIT`. A length or count read from untrusted bytes must never size an allocation, and
//! without AddressSanitizer's malloc hooks libFuzzer only notices memory that is touched
//! (-rss_limit_mb), not a huge `Vec::with_capacity` that is never filled.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write as _;

/// Far above what any input of at most 64 KB legitimately needs (a few MB).
const LIMIT: usize = 64 << 20;

pub struct Guard;

fn check(size: usize) {
    if size > LIMIT {
        // No panic (not allowed while allocating) and no allocation: a fixed line, then abort,
        // which libFuzzer reports as a crash with the input saved.
        let _ = std::io::stderr().write_all(b"alloc_guard: single allocation over 64 MiB\n");
        std::process::abort();
    }
}

// SAFETY: every call is forwarded unchanged to `System`; `check` only reads the size.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}
