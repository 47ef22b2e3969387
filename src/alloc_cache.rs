//! A small per-thread cache of freed small blocks in front of the system allocator.
//!
//! Why: decoding a feed allocates and frees tens of thousands of small blocks (prost strings,
//! boxed sub-messages, vectors), entity after entity. musl's allocator (the shipped static
//! build) hands whole groups back to the kernel as they empty and maps them again for the
//! next entity: on the 2.5 MB fixture ~570 mmap/munmap pairs and their page faults per convert
//! (BENCHMARKS.md "What moved"). Here a block of up to `MAX_CACHED` bytes, once freed, waits
//! on its thread's list for the next allocation of its size class instead.
//!
//! Bounds: at most `MAX_CACHED_BYTES` per thread; `trim()` hands a thread's cache back to the
//! system allocator, and each feed loop calls it after every poll and before it ends, so an
//! idle process holds no cache. A thread that never trims (a library's own thread) keeps at
//! most the bound until the process exits; a thread's cache is not freed when it exits (a
//! thread-local destructor would have to allocate its registration inside the allocator).
//!
//! Blocks move between threads freely: every cached block was allocated from the system
//! allocator with its class's size and alignment, so any thread may cache or free it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Size classes: steps of 16 bytes up to 512 (prost's strings and sub-messages), then powers
/// of two up to 32 KiB (vectors of stop time updates as they grow); alignment up to 16.
const SMALL_MAX: usize = 512;
const CLASS: usize = 16;
const SMALL_CLASSES: usize = SMALL_MAX / CLASS;
const MAX_CACHED: usize = 32 * 1024;
/// 1 KiB, 2 KiB, … 32 KiB.
const CLASSES: usize = SMALL_CLASSES + 6;
/// What one thread may keep cached, in bytes.
const MAX_CACHED_BYTES: usize = 256 * 1024;

pub struct CachingAlloc;

struct Cache {
    /// Singly linked free lists, the next pointer stored in the block's first word.
    heads: [*mut u8; CLASSES],
    bytes: usize,
}

thread_local! {
    // Const-initialised and without Drop: no lazy registration, so touching it inside the
    // allocator never allocates.
    static CACHE: UnsafeCell<Cache> = const {
        UnsafeCell::new(Cache { heads: [ptr::null_mut(); CLASSES], bytes: 0 })
    };
}

/// The class index of a layout that is cached, else None.
#[inline]
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if size == 0 || size > MAX_CACHED || layout.align() > CLASS {
        return None;
    }
    if size <= SMALL_MAX {
        return Some((size - 1) / CLASS);
    }
    // 513..=1024 → the first power-of-two class, and so on.
    let log2 = usize::BITS - (size - 1).leading_zeros();
    Some(SMALL_CLASSES + (log2 as usize - 10))
}

#[inline]
fn class_size(class: usize) -> usize {
    if class < SMALL_CLASSES {
        (class + 1) * CLASS
    } else {
        1 << (class - SMALL_CLASSES + 10)
    }
}

#[inline]
fn class_layout(class: usize) -> Layout {
    // SAFETY: sizes 16..=32768 with alignment 16 are always valid layouts.
    unsafe { Layout::from_size_align_unchecked(class_size(class), CLASS) }
}

/// Runs `f` on this thread's cache; None once the thread's locals are gone (thread exit).
#[inline]
fn with_cache<R>(f: impl FnOnce(&mut Cache) -> R) -> Option<R> {
    // SAFETY: the cache is only touched here, by its own thread, and `f` never re-enters the
    // allocator (it only moves pointers), so no second `&mut` to it can exist at once.
    CACHE.try_with(|c| f(unsafe { &mut *c.get() })).ok()
}

unsafe impl GlobalAlloc for CachingAlloc {
    // One out-of-line copy: inlined into every allocation site it costs ~40 KB of binary.
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.alloc(layout) };
        };
        let cached = with_cache(|cache| {
            let head = cache.heads[class];
            if head.is_null() {
                return head;
            }
            // SAFETY: a cached block holds the next pointer in its first word (written by
            // `dealloc`), and is at least 16 bytes, aligned to 16.
            cache.heads[class] = unsafe { head.cast::<*mut u8>().read() };
            cache.bytes -= class_size(class);
            head
        })
        .unwrap_or(ptr::null_mut());
        if cached.is_null() {
            // SAFETY: a valid, non-zero layout.
            unsafe { System.alloc(class_layout(class)) }
        } else {
            cached
        }
    }

    #[inline(never)]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.dealloc(block, layout) };
        };
        let size = class_size(class);
        let kept = with_cache(|cache| {
            if cache.bytes + size > MAX_CACHED_BYTES {
                return false;
            }
            // SAFETY: the block is ours again (the caller freed it), at least 16 bytes and
            // aligned to 16: its first word can hold the list's next pointer.
            unsafe { block.cast::<*mut u8>().write(cache.heads[class]) };
            cache.heads[class] = block;
            cache.bytes += size;
            true
        })
        .unwrap_or(false);
        if !kept {
            // SAFETY: the block came from System with its class's layout.
            unsafe { System.dealloc(block, class_layout(class)) }
        }
    }

    #[inline(never)]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `layout.align()` with `new_size` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // Same class: the block already has room.
            (Some(a), Some(b)) if a == b => block,
            // SAFETY: neither is cached: the system allocator's own realloc, same guarantees.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: a fresh block of the new layout, the smaller size copied, the old
                // block freed by the path that allocated it.
                unsafe {
                    let new = self.alloc(new_layout);
                    if !new.is_null() {
                        ptr::copy_nonoverlapping(block, new, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    new
                }
            }
        }
    }
}

/// Hands this thread's cached blocks back to the system allocator.
pub fn trim() {
    let heads = with_cache(|cache| {
        cache.bytes = 0;
        std::mem::replace(&mut cache.heads, [ptr::null_mut(); CLASSES])
    });
    for (class, mut block) in heads.into_iter().flatten().enumerate() {
        while !block.is_null() {
            // SAFETY: every listed block came from System with its class's layout and holds
            // the next pointer in its first word; it is off the list, so nobody else uses it.
            unsafe {
                let next = block.cast::<*mut u8>().read();
                System.dealloc(block, class_layout(class));
                block = next;
            }
        }
    }
}

/// Bytes this thread holds cached (tests, metrics).
pub fn cached_bytes() -> usize {
    with_cache(|cache| cache.bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_small_blocks_only() {
        let l = |size, align| Layout::from_size_align(size, align).unwrap();
        assert_eq!(class_of(l(1, 1)), Some(0));
        assert_eq!(class_of(l(16, 8)), Some(0));
        assert_eq!(class_of(l(17, 8)), Some(1));
        assert_eq!(class_of(l(512, 16)), Some(SMALL_CLASSES - 1));
        assert_eq!(class_of(l(513, 8)), Some(SMALL_CLASSES));
        assert_eq!(class_size(SMALL_CLASSES), 1024);
        assert_eq!(class_of(l(1025, 8)), Some(SMALL_CLASSES + 1));
        assert_eq!(class_of(l(32768, 8)), Some(CLASSES - 1));
        assert_eq!(class_size(CLASSES - 1), 32768);
        assert_eq!(class_of(l(32769, 8)), None);
        assert_eq!(
            class_of(l(64, 32)),
            None,
            "stricter alignment goes to the system"
        );
        assert_eq!(class_of(l(0, 1)), None);
    }

    #[test]
    fn freed_blocks_are_reused_bounded_and_trimmed() {
        let a = CachingAlloc;
        let layout = Layout::from_size_align(40, 8).unwrap();
        trim();
        unsafe {
            let p = a.alloc(layout);
            p.write_bytes(0xab, 40);
            a.dealloc(p, layout);
            assert_eq!(cached_bytes(), 48);
            // The next block of the class is the one just freed.
            let q = a.alloc(Layout::from_size_align(33, 1).unwrap());
            assert_eq!(p, q);
            assert_eq!(cached_bytes(), 0);
            a.dealloc(q, Layout::from_size_align(33, 1).unwrap());
            // Never more than the bound, however much is freed.
            let many: Vec<*mut u8> = (0..(MAX_CACHED_BYTES / 512 + 100))
                .map(|_| a.alloc(Layout::from_size_align(512, 16).unwrap()))
                .collect();
            for p in many {
                a.dealloc(p, Layout::from_size_align(512, 16).unwrap());
            }
            assert!(cached_bytes() <= MAX_CACHED_BYTES);
            assert!(cached_bytes() > MAX_CACHED_BYTES - 512);
        }
        trim();
        assert_eq!(cached_bytes(), 0);
    }

    #[test]
    fn realloc_keeps_contents_across_classes_and_to_the_system() {
        let a = CachingAlloc;
        unsafe {
            let l = Layout::from_size_align(20, 4).unwrap();
            let p = a.alloc(l);
            for i in 0..20 {
                p.add(i).write(i as u8);
            }
            // Same class: same block.
            assert_eq!(a.realloc(p, l, 30), p);
            let l = Layout::from_size_align(30, 4).unwrap();
            // Up a class, then out of the cached range, then back.
            let q = a.realloc(p, l, 300);
            let r = a.realloc(q, Layout::from_size_align(300, 4).unwrap(), 5000);
            let s = a.realloc(r, Layout::from_size_align(5000, 4).unwrap(), 10);
            for i in 0..10 {
                assert_eq!(s.add(i).read(), i as u8);
            }
            a.dealloc(s, Layout::from_size_align(10, 4).unwrap());
        }
        trim();
    }

    #[test]
    fn blocks_freed_on_another_thread_are_valid_there() {
        let layout = Layout::from_size_align(64, 8).unwrap();
        let blocks: Vec<usize> = (0..100)
            .map(|_| unsafe { CachingAlloc.alloc(layout) } as usize)
            .collect();
        std::thread::spawn(move || {
            trim();
            for &p in &blocks {
                unsafe { CachingAlloc.dealloc(p as *mut u8, layout) };
            }
            assert_eq!(cached_bytes(), 100 * 64);
            drop(blocks);
            trim();
            assert_eq!(cached_bytes(), 0);
        })
        .join()
        .unwrap();
    }
}
