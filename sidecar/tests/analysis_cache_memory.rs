//! The analysis cache is bounded by the memory its analyses hold, not only by their number: a
//! flood of distinct statements, each as long and as costly to keep as the cache admits,
//! leaves the process holding no more than the cache's byte bound. The heap is measured by a
//! counting allocator, and the cache's estimate of each entry is checked against what the
//! statement shapes with the largest parse trees for their length really hold.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Mutex;

use portcullis_sidecar::policy::analyze::analyze;
use portcullis_sidecar::policy::cache::{cost, AnalysisCache, MAX_BYTES};
use portcullis_sidecar::workers::SESSION_STACK_BYTES;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The measurements share one heap counter: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f` on a stack as large as the session workers' (analysis walks a left-deep chain
/// once per link, as sessions do).
fn on_session_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(SESSION_STACK_BYTES)
        .spawn(f)
        .expect("thread")
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

/// Statements of about `len` bytes whose parse trees are the largest for their length; `i`
/// makes each one distinct (a name, so the shape differs too).
fn costly(len: usize, i: usize) -> Vec<String> {
    let fill = |head: String, unit: &str, tail: &str| {
        let mut s = head;
        while s.len() + unit.len() + tail.len() < len {
            s.push_str(unit);
        }
        s.push_str(tail);
        s
    };
    vec![
        fill(format!("SELECT c{i}"), ",1", ""),
        fill(format!("SELECT c{i}"), ",a", ""),
        fill(format!("SELECT c{i} FROM t WHERE a"), "+a", ""),
        fill(format!("SELECT c{i} FROM t WHERE a IN (1"), ",1", ")"),
        fill(format!("SELECT c{i}"), ",f(a)", ""),
        fill(format!("SELECT c{i}"), ",a.b", ""),
        fill(format!("SELECT c{i}"), ",'x'", ""),
        fill(format!("SELECT c{i}"), ",a::t", ""),
        fill(format!("SELECT c{i}"), ",$1", ""),
        fill(format!("SELECT c{i} FROM t WHERE a = 1"), " OR a = 1", ""),
        fill(format!("SELECT c{i}"), ",(a)", ""),
        fill(format!("SELECT c{i}"), ",ARRAY[1]", ""),
        fill(format!("INSERT INTO t{i} VALUES (1)"), ",(1)", ""),
    ]
}

#[test]
fn an_entry_is_charged_at_least_what_its_analysis_holds() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    on_session_stack(charged_at_least_what_is_held);
}

fn charged_at_least_what_is_held() {
    // State made once per process or thread (compiled patterns, the parser's tables) is not
    // the entry's: make it before measuring.
    for sql in costly(64, 0) {
        drop(analyze(&sql));
    }
    for len in [64, 512, 4096, 8000] {
        for sql in costly(len, 7) {
            let before = LIVE.load(Ordering::SeqCst);
            let analysis = analyze(&sql);
            let held = LIVE.load(Ordering::SeqCst) - before;
            let charged = cost(&sql);
            assert!(
                held as usize <= charged,
                "{} bytes of {:?}... hold {held} bytes, charged {charged}",
                sql.len(),
                &sql[..sql.len().min(40)]
            );
            drop(analysis);
        }
    }
}

#[test]
fn a_flood_of_distinct_statements_stays_within_the_byte_bound() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    on_session_stack(a_flood_stays_within_the_bound);
}

fn a_flood_stays_within_the_bound() {
    for sql in costly(64, 0) {
        drop(analyze(&sql));
    }
    let cache = AnalysisCache::default();
    let before = LIVE.load(Ordering::SeqCst);
    let mut peak = 0isize;
    for i in 0..40 {
        for sql in costly(8000, i) {
            drop(cache.analyze(&sql));
            peak = peak.max(LIVE.load(Ordering::SeqCst) - before);
            let (_, bytes) = cache.usage();
            assert!(bytes <= MAX_BYTES, "cache charges {bytes} bytes");
        }
    }
    // What the cache holds, plus one analysis being made.
    let allowed = MAX_BYTES + 4 * cost(&"x".repeat(8000));
    assert!(
        peak as usize <= allowed,
        "the heap grew by {peak} bytes with the cache bounded at {MAX_BYTES}"
    );
}
