//! The decoding step's host loops run on libtorch's own threads. Its CPU build runs its kernels
//! and MKL's on a libgomp team, whose workers spin for a while after each parallel region, so
//! threads of our own compete with them for the cores. Measured on 2 cores (tiny fp32 W6's
//! sampling, medians of 12 iterations): the fused attention split over rayon's two threads was no
//! faster than on one thread (0.32 / 0.31 s); split over libtorch's team in a parallel region of
//! its own, 0.23 s against one thread's 0.34 s in the same run. libgomp's entry points are looked
//! up in the running process; where they are absent (another OpenMP runtime, or none), the loops
//! run on the calling thread.

use std::ffi::{c_void, CStr};
use std::ops::Range;
use std::sync::OnceLock;

/// `GOMP_parallel(body, data, num_threads, flags)`: what GCC compiles `#pragma omp parallel` to.
type Parallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, u32, u32);
/// `omp_get_thread_num()` and `omp_get_num_threads()`.
type Query = unsafe extern "C" fn() -> i32;

/// libgomp's entry points.
struct Gomp {
    parallel: Parallel,
    thread_num: Query,
    num_threads: Query,
}

fn gomp() -> Option<&'static Gomp> {
    static GOMP: OnceLock<Option<Gomp>> = OnceLock::new();
    GOMP.get_or_init(|| {
        let find = |name: &CStr| {
            // SAFETY: a lookup in the process's global scope; it reads only the name.
            unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
        };
        let parallel = find(c"GOMP_parallel");
        let thread_num = find(c"omp_get_thread_num");
        let num_threads = find(c"omp_get_num_threads");
        if parallel.is_null() || thread_num.is_null() || num_threads.is_null() {
            return None;
        }
        // SAFETY: each symbol has the C signature libgomp's ABI gives it.
        unsafe {
            Some(Gomp {
                parallel: std::mem::transmute::<*mut c_void, Parallel>(parallel),
                thread_num: std::mem::transmute::<*mut c_void, Query>(thread_num),
                num_threads: std::mem::transmute::<*mut c_void, Query>(num_threads),
            })
        }
    })
    .as_ref()
}

/// Runs `f` over `0..n` split into contiguous ranges, one per thread of libtorch's team (as many
/// threads as its intra-op setting), or over the whole range on this thread where `n < min_split`
/// or the team cannot be reached. `f` must not panic (a panic cannot unwind out of the team).
pub(super) fn split_rows(n: usize, min_split: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
    let gomp = match gomp() {
        Some(g) if n >= min_split && tch::get_num_threads() > 1 => g,
        _ => return f(0..n),
    };
    struct Job<'a> {
        gomp: &'a Gomp,
        n: usize,
        f: &'a (dyn Fn(Range<usize>) + Sync),
    }
    extern "C" fn body(data: *mut c_void) {
        // SAFETY: `data` is the `Job` below, alive until `GOMP_parallel` returns.
        let job = unsafe { &*(data as *const Job) };
        // SAFETY: both calls only read the calling thread's place in its team.
        let (t, threads) = unsafe { ((job.gomp.thread_num)(), (job.gomp.num_threads)()) };
        let (t, threads) = (t.max(0) as usize, threads.max(1) as usize);
        let per = job.n.div_ceil(threads);
        let start = (t * per).min(job.n);
        (job.f)(start..(start + per).min(job.n));
    }
    let job = Job { gomp, n, f };
    // SAFETY: `body` reads only `job`, which outlives the region; 0 threads asks for the team's
    // size as libtorch set it.
    unsafe { (gomp.parallel)(body, &job as *const Job as *mut c_void, 0, 0) };
}

/// Defines `fn $name(args) { body }` so that the body runs compiled for AVX2 where the CPU has
/// it (checked at run time; the wheels' baseline is SSE2) and as compiled elsewhere: the body is
/// an `#[inline(always)]` function compiled again inside an AVX2 copy.
macro_rules! avx2_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2, the one feature `avx2` is compiled for beyond
                    // the baseline.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(super) use avx2_dispatch;

/// `Σ f(x)` over `xs`, summed in eight lanes so that it vectorises (a serial sum cannot be
/// reassociated), then across them.
#[inline(always)]
pub(super) fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += f(x);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn split_rows_visits_every_row_once_in_contiguous_ranges() {
        // More rows than threads, fewer (some threads get an empty range), one, and none; split
        // and, with min_split above n, not.
        for (n, min_split) in [(37, 1), (1_000, 16), (1, 1), (0, 1), (5, 6)] {
            let visits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            let calls = AtomicUsize::new(0);
            split_rows(n, min_split, &|rows| {
                assert!(rows.start <= rows.end && rows.end <= n, "{rows:?} of {n}");
                calls.fetch_add(1, Ordering::Relaxed);
                for v in &visits[rows] {
                    v.fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(
                visits.iter().all(|v| v.load(Ordering::Relaxed) == 1),
                "n {n}"
            );
            let threads = tch::get_num_threads().max(1) as usize;
            let expected = if n < min_split || gomp().is_none() {
                1
            } else {
                threads
            };
            assert_eq!(calls.load(Ordering::Relaxed), expected, "n {n}");
        }
        // The pinned torch for Linux ships libgomp; without it decoding would run on one thread.
        if cfg!(target_os = "linux") {
            assert!(gomp().is_some(), "libgomp's entry points were not found");
        }
    }

    #[test]
    fn lane_sum_sums_every_element_through_the_function() {
        // 19 elements: two whole lane blocks and a tail of 3.
        let xs: Vec<f32> = (1..=19).map(|i| i as f32).collect();
        assert_eq!(lane_sum(&xs, |x| x), 190.0);
        assert_eq!(lane_sum(&xs, |x| x * x), 2_470.0);
        assert_eq!(lane_sum(&[], |x| x), 0.0);
    }
}
