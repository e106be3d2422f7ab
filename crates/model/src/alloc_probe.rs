//! Markers for counting heap allocations on the serving loop (a test's
//! counting global allocator reads them; nothing is counted here).
//!
//! The server marks its client, serial and inference threads as *loop
//! threads*, and the engine marks the span of tract's own plan run. An
//! allocator can then tell allocations made by our loop code apart from
//! those made inside tract. Both flags are plain thread-locals with const
//! initialisers, so reading them from an allocator never allocates.

use std::cell::Cell;

thread_local! {
    static LOOP_THREAD: Cell<bool> = const { Cell::new(false) };
    static IN_TRACT: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one of the serving loop's threads.
pub fn mark_loop_thread() {
    LOOP_THREAD.with(|c| c.set(true));
}

/// Whether the calling thread is a serving-loop thread.
pub fn on_loop_thread() -> bool {
    LOOP_THREAD.try_with(Cell::get).unwrap_or(false)
}

/// Whether the calling thread is inside tract's plan run.
pub fn in_tract_run() -> bool {
    IN_TRACT.try_with(Cell::get).unwrap_or(false)
}

/// Runs `f` (tract's plan run) with the in-tract marker set.
pub(crate) fn tract_run<R>(f: impl FnOnce() -> R) -> R {
    IN_TRACT.with(|c| c.set(true));
    let r = f();
    IN_TRACT.with(|c| c.set(false));
    r
}
