//! Gives the heap a burst freed back to the operating system (glibc only; elsewhere
//! [`spawn_trimmer`] does nothing).
//!
//! glibc keeps freed memory mapped in its arenas. Measured (release build, README
//! "Performance"): 20 stalled WebSocket readers of 20,000 10 KB rows took RSS from 10 MB to
//! 505 MB, and 351-498 MB stayed 10 s after they were gone, with 0.6 MB in use; 5,000 unread SSE
//! streams of 10,000 events, 91 MB -> 815-867 MB, and 585-608 MB stayed after close, with 1.9 MB
//! in use. With this task, 11-17 MB 10 s after in both; `MALLOC_ARENA_MAX=2` and
//! `MALLOC_TRIM_THRESHOLD_` did not help.

/// Starts the background task that trims the heap after a burst (a no-op but on glibc).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn spawn_trimmer() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub use glibc::spawn_trimmer;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::time::{Duration, Instant};

    /// How often the heap is looked at: a read of /proc/self/statm and `mallinfo2`.
    const CHECK_EVERY: Duration = Duration::from_secs(5);
    /// Trim when resident memory exceeds what is in use by this much more than the last trim
    /// left (what a trim cannot return, it is not retried for).
    const RETAINED: usize = 64 << 20;

    #[derive(Clone, Copy, Default)]
    struct State {
        /// Least resident-but-unused memory since the last trim.
        floor: usize,
        /// In use at the previous check.
        in_use: usize,
    }

    pub fn spawn_trimmer() {
        tokio::spawn(async {
            let mut interval = tokio::time::interval(CHECK_EVERY);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut state = State::default();
            loop {
                interval.tick().await;
                // Off the runtime: a trim of 0.4-2.6 GB took 34-314 ms (each arena locked in turn).
                match tokio::task::spawn_blocking(move || check(state)).await {
                    Ok(next) => state = next,
                    Err(_) => return,
                }
            }
        });
    }

    /// Trims when in use holds steady (within 10% of the previous check): not while a burst
    /// grows (the memory is about to be used again), nor while a teardown still frees (the trim
    /// would contend with it and need a second one; both seen when trimming on retention alone).
    fn check(state: State) -> State {
        let Some(resident) = resident_bytes() else { return state };
        if resident < state.floor.saturating_add(RETAINED) {
            return State { floor: state.floor.min(resident), in_use: 0 }; // idle: no arena walk
        }
        let in_use = in_use_bytes();
        let retained = resident.saturating_sub(in_use);
        let next = State { floor: state.floor.min(retained), in_use };
        if retained < state.floor.saturating_add(RETAINED) || in_use.abs_diff(state.in_use) > state.in_use / 10 {
            return next;
        }
        let started = Instant::now();
        // SAFETY: malloc_trim only gives free pages back; any thread may call it.
        unsafe { libc::malloc_trim(0) };
        let ms = started.elapsed().as_millis() as u64;
        let resident = resident_bytes().unwrap_or(0);
        tracing::debug!(retained_mb = retained >> 20, resident_mb = resident >> 20, ms, "heap trimmed");
        State { floor: resident.saturating_sub(in_use), in_use }
    }

    /// Resident bytes, from /proc/self/statm.
    fn resident_bytes() -> Option<usize> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: reads a constant of the system.
        Some(pages * usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?)
    }

    /// Bytes malloc has handed out (arena chunks and mmapped blocks). `mallinfo2` walks the free
    /// lists, each arena locked in turn: 0.1-12 ms with GBs of heap, up to 110 ms while a teardown
    /// frees.
    fn in_use_bytes() -> usize {
        // SAFETY: only reads allocator state.
        let info = unsafe { libc::mallinfo2() };
        info.uordblks + info.hblkhd
    }
}
