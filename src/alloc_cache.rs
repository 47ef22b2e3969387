//! A small per-thread cache of freed small blocks in front of the system allocator, and a
//! process-wide pool of a few large ones.
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
//! Larger blocks, up to `LARGE_MAX` (a produce call's record batch, its codec's input and
//! output, 32 KiB – 1 MiB each), go to one process-wide pool instead, on the static musl build
//! only: musl maps every such block afresh and unmaps it when freed, so each produce call
//! paid a page fault per 4 KiB of every buffer (a third of the producer's CPU on an 84 kB
//! document, BENCHMARKS.md "What moved"); glibc keeps freed blocks itself. The pool holds at
//! most `LARGE_POOL_BYTES` for the whole process, whatever the number of feeds; `trim()` cuts
//! it to `LARGE_IDLE_BYTES` (what the send of a ~100 kB document uses), so that little stays
//! resident when idle and the next poll of a small feed finds its buffers mapped.
//!
//! Blocks move between threads freely: every cached block was allocated from the system
//! allocator with its class's size and alignment, so any thread may cache or free it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;
use std::sync::{Mutex, PoisonError};

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

/// Large classes: four per doubling above 32 KiB (40, 48, 56, 64 KiB, 80 KiB, … 1 MiB), so a
/// block is at most a quarter larger than asked.
const LARGE_MAX: usize = 1024 * 1024;
const LARGE_STEPS: usize = 4;
const LARGE_CLASSES: usize = 5 * LARGE_STEPS;
/// What the process-wide pool of large blocks may hold, in bytes, and in how many blocks.
const LARGE_POOL_BYTES: usize = 1024 * 1024;
const LARGE_POOL_SLOTS: usize = 8;
/// What the pool keeps after a `trim()`.
const LARGE_IDLE_BYTES: usize = 256 * 1024;
/// Whether large blocks are pooled: the static musl build only (module comment).
const POOL_LARGE: bool = cfg!(target_env = "musl");

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

/// The class index of a layout that is cached (per thread below `CLASSES`, in the large pool
/// from there), else None.
#[inline]
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if size == 0 || layout.align() > CLASS {
        return None;
    }
    if size <= SMALL_MAX {
        return Some((size - 1) / CLASS);
    }
    if size <= MAX_CACHED {
        // 513..=1024 → the first power-of-two class, and so on.
        let log2 = usize::BITS - (size - 1).leading_zeros();
        return Some(SMALL_CLASSES + (log2 as usize - 10));
    }
    if !POOL_LARGE || size > LARGE_MAX {
        return None;
    }
    large_class_of(size).map(|c| CLASSES + c)
}

/// The large class (0-based) of a size in (32 KiB, 1 MiB].
#[inline]
fn large_class_of(size: usize) -> Option<usize> {
    // The doubling the size falls in (above 32 KiB up to 64 KiB is the first) and the quarter
    // of it the size reaches.
    let log2 = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize;
    let base = 1usize << log2;
    let quarter = (size - 1 - base) / (base / LARGE_STEPS);
    let doubling = log2.checked_sub(MAX_CACHED.trailing_zeros() as usize)?;
    let class = doubling * LARGE_STEPS + quarter;
    (class < LARGE_CLASSES).then_some(class)
}

#[inline]
fn class_size(class: usize) -> usize {
    if class < SMALL_CLASSES {
        (class + 1) * CLASS
    } else if class < CLASSES {
        1 << (class - SMALL_CLASSES + 10)
    } else {
        let large = class - CLASSES;
        let base = MAX_CACHED << (large / LARGE_STEPS);
        base + base / LARGE_STEPS * (large % LARGE_STEPS + 1)
    }
}

#[inline]
fn class_layout(class: usize) -> Layout {
    // SAFETY: sizes 16 bytes ..= 1 MiB with alignment 16 are always valid layouts.
    unsafe { Layout::from_size_align_unchecked(class_size(class), CLASS) }
}

/// The process-wide pool of large blocks: a few slots, taken by class.
struct LargePool {
    slots: [(*mut u8, usize); LARGE_POOL_SLOTS],
    bytes: usize,
}

// SAFETY: the pointers are blocks nobody else holds; the pool is only reached through its mutex.
unsafe impl Send for LargePool {}

static LARGE: Mutex<LargePool> = Mutex::new(LargePool {
    slots: [(ptr::null_mut(), 0); LARGE_POOL_SLOTS],
    bytes: 0,
});

/// Runs `f` on the pool. std's mutex never allocates; nothing in `f` can panic, so a poisoned
/// lock (impossible here) is used as is.
#[inline]
fn with_large<R>(f: impl FnOnce(&mut LargePool) -> R) -> R {
    f(&mut LARGE.lock().unwrap_or_else(PoisonError::into_inner))
}

impl LargePool {
    fn take(&mut self, class: usize) -> *mut u8 {
        for slot in &mut self.slots {
            if !slot.0.is_null() && slot.1 == class {
                self.bytes -= class_size(class);
                return std::mem::replace(&mut slot.0, ptr::null_mut());
            }
        }
        ptr::null_mut()
    }

    /// Takes blocks out, largest first, until at most `keep` bytes are left in the pool.
    fn shrink_to(&mut self, keep: usize) -> [(*mut u8, usize); LARGE_POOL_SLOTS] {
        let mut out = [(ptr::null_mut::<u8>(), 0); LARGE_POOL_SLOTS];
        while self.bytes > keep {
            let Some(largest) = self
                .slots
                .iter_mut()
                .filter(|slot| !slot.0.is_null())
                .max_by_key(|slot| slot.1)
            else {
                break;
            };
            let taken = std::mem::replace(largest, (ptr::null_mut(), 0));
            self.bytes -= class_size(taken.1);
            if let Some(free) = out.iter_mut().find(|o| o.0.is_null()) {
                *free = taken;
            }
        }
        out
    }

    /// Keeps `block` if the bounds allow; false: the caller frees it.
    fn keep(&mut self, block: *mut u8, class: usize) -> bool {
        if self.bytes + class_size(class) > LARGE_POOL_BYTES {
            return false;
        }
        match self.slots.iter_mut().find(|slot| slot.0.is_null()) {
            Some(slot) => {
                *slot = (block, class);
                self.bytes += class_size(class);
                true
            }
            None => false,
        }
    }
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
        if class >= CLASSES {
            let pooled = with_large(|pool| pool.take(class));
            if !pooled.is_null() {
                return pooled;
            }
            // SAFETY: a valid, non-zero layout.
            return unsafe { System.alloc(class_layout(class)) };
        }
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
        if class >= CLASSES {
            if !with_large(|pool| pool.keep(block, class)) {
                // SAFETY: the block came from System with its class's layout.
                unsafe { System.dealloc(block, class_layout(class)) }
            }
            return;
        }
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

/// Hands this thread's cached blocks back to the system allocator, and the process-wide pool's
/// beyond `LARGE_IDLE_BYTES`.
pub fn trim() {
    for (block, class) in with_large(|pool| pool.shrink_to(LARGE_IDLE_BYTES)) {
        if !block.is_null() {
            // SAFETY: the block came from System with its class's layout, and is off the pool.
            unsafe { System.dealloc(block, class_layout(class)) }
        }
    }
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
    fn classes_cover_small_blocks_per_thread() {
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
        assert_eq!(
            class_of(l(32769, 8)),
            POOL_LARGE.then_some(CLASSES),
            "past 32 KiB: the large pool's first class, or the system"
        );
        assert_eq!(
            class_of(l(64, 32)),
            None,
            "stricter alignment goes to the system"
        );
        assert_eq!(class_of(l(0, 1)), None);
    }

    #[test]
    fn large_classes_step_by_quarters_up_to_a_mebibyte() {
        let class = |size| large_class_of(size).map(|c| class_size(CLASSES + c));
        assert_eq!(class(32 * 1024 + 1), Some(40 * 1024));
        assert_eq!(class(40 * 1024), Some(40 * 1024));
        assert_eq!(class(40 * 1024 + 1), Some(48 * 1024));
        assert_eq!(class(64 * 1024), Some(64 * 1024));
        assert_eq!(class(64 * 1024 + 1), Some(80 * 1024));
        assert_eq!(class(84_075), Some(96 * 1024));
        assert_eq!(class(LARGE_MAX), Some(LARGE_MAX));
        assert_eq!(class(LARGE_MAX + 1), None);
        // Every size gets a block at least as large and at most a quarter larger.
        for size in (32 * 1024 + 1..=LARGE_MAX).step_by(997) {
            let block = class(size).unwrap();
            assert!(
                block >= size && block <= size + size / 4 + 1,
                "{size} -> {block}"
            );
        }
        let l = |size| Layout::from_size_align(size, 8).unwrap();
        assert_eq!(
            class_of(l(100_000)).is_some(),
            POOL_LARGE,
            "large blocks are pooled on musl only"
        );
        assert_eq!(class_of(l(LARGE_MAX + 1)), None);
    }

    #[test]
    fn the_large_pool_hands_back_its_class_and_keeps_within_its_bound() {
        let empty = || LargePool {
            slots: [(ptr::null_mut(), 0); LARGE_POOL_SLOTS],
            bytes: 0,
        };
        let mut pool = empty();
        let class = CLASSES + large_class_of(100_000).unwrap();
        let mut blocks = [0u8; LARGE_POOL_SLOTS + 2];
        let base = blocks.as_mut_ptr();
        let block = |i: usize| base.wrapping_add(i);
        assert!(pool.take(class).is_null());
        assert!(pool.keep(block(0), class));
        assert!(
            pool.take(class + 1).is_null(),
            "another class is not handed out"
        );
        assert_eq!(pool.take(class), block(0));
        assert_eq!(pool.bytes, 0);
        // Bounded by slots: eight 112 KiB blocks fit the bytes, a ninth has no slot.
        let kept = (0..LARGE_POOL_SLOTS + 2)
            .filter(|&i| pool.keep(block(i), class))
            .count();
        assert_eq!(kept, LARGE_POOL_SLOTS);
        assert!(pool.bytes <= LARGE_POOL_BYTES);
        // Cut to the idle bound, the largest blocks first.
        let small = CLASSES + large_class_of(40 * 1024).unwrap();
        let mut pool = empty();
        assert!(pool.keep(block(0), small));
        assert!(pool.keep(block(1), class));
        assert!(pool.keep(block(2), CLASSES + large_class_of(300_000).unwrap()));
        let freed = pool.shrink_to(200 * 1024);
        let freed: Vec<*mut u8> = freed.iter().map(|f| f.0).filter(|p| !p.is_null()).collect();
        assert_eq!(freed, [block(2)]);
        assert_eq!(pool.bytes, 40 * 1024 + 112 * 1024);
        assert_eq!(
            pool.shrink_to(0).iter().filter(|f| !f.0.is_null()).count(),
            2
        );
        assert_eq!(pool.bytes, 0);
        // Bounded by bytes: a 1 MiB block fills it.
        let mut pool = empty();
        assert!(pool.keep(block(0), CLASSES + LARGE_CLASSES - 1));
        assert!(!pool.keep(block(1), CLASSES), "over the byte bound");
        assert_eq!(pool.bytes, LARGE_POOL_BYTES);
    }

    /// README "Memory": after a poll the pool keeps at most 256 KiB. On glibc nothing else
    /// uses the process-wide pool (it is musl's), so here it is this test's alone.
    #[cfg(not(target_env = "musl"))]
    #[test]
    fn trim_cuts_the_large_pool_to_its_idle_bound() {
        let class = CLASSES + large_class_of(200_000).unwrap();
        for _ in 0..4 {
            // SAFETY: a valid layout; the block goes to the pool, which frees it as its class.
            let block = unsafe { System.alloc(class_layout(class)) };
            assert!(with_large(|pool| pool.keep(block, class)));
        }
        assert!(with_large(|pool| pool.bytes) > LARGE_IDLE_BYTES);
        trim();
        let kept = with_large(|pool| pool.bytes);
        assert!(kept > 0 && kept <= LARGE_IDLE_BYTES, "{kept}");
        for (block, class) in with_large(|pool| pool.shrink_to(0)) {
            if !block.is_null() {
                // SAFETY: allocated above with this class's layout, now off the pool.
                unsafe { System.dealloc(block, class_layout(class)) }
            }
        }
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
