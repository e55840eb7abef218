//! The BLAS `sgemm` that libtorch's CPU build links (MKL's, in the pinned wheels), looked up in
//! the running process like libgomp's entry points in [`super::host`]. A decoding step calls it
//! on each thread's own rows from inside one parallel region, where MKL runs on the calling
//! thread alone: the step's matmuls then open no parallel region of their own (libtorch's `mm`
//! does, per call, and MKL ran some of the small decoding products on one thread while the other
//! spun) and go through no dispatch.
//!
//! MKL's packed-weight API (`cblas_sgemm_pack`/`_compute`, also in the wheels) was measured
//! in the same place and was no faster: what `perf` shows as MKL's copying in a decoding step is
//! mostly the weights' first read from memory, which packing only moves.

use std::ffi::{c_char, c_void};
use std::sync::OnceLock;

/// Fortran `sgemm`: `C := α·op(A)·op(B) + β·C`, column-major, every argument by reference, 32-bit
/// integers (the LP64 interface).
type Sgemm = unsafe extern "C" fn(
    transa: *const c_char,
    transb: *const c_char,
    m: *const i32,
    n: *const i32,
    k: *const i32,
    alpha: *const f32,
    a: *const f32,
    lda: *const i32,
    b: *const f32,
    ldb: *const i32,
    beta: *const f32,
    c: *mut f32,
    ldc: *const i32,
);

/// A handle on the process's `sgemm`.
#[derive(Clone, Copy)]
pub(super) struct Gemm(Sgemm);

/// The process's `sgemm_`, if libtorch brought one.
pub(super) fn sgemm() -> Option<Gemm> {
    static SGEMM: OnceLock<Option<Gemm>> = OnceLock::new();
    *SGEMM.get_or_init(|| {
        // SAFETY: a lookup in the process's global scope; it reads only the name.
        let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"sgemm_".as_ptr()) };
        // SAFETY: `sgemm_` has the reference BLAS signature above.
        (!f.is_null()).then(|| Gemm(unsafe { std::mem::transmute::<*mut c_void, Sgemm>(f) }))
    })
}

impl Gemm {
    /// Row-major `c [m, n] := a [m, k] · b [k, n] + beta · c`, all contiguous.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rows(
        self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
        beta: f32,
        c: &mut [f32],
    ) {
        assert!(
            a.len() == m * k && b.len() == k * n && c.len() == m * n,
            "gemm shapes"
        );
        if m == 0 || n == 0 {
            return;
        }
        let int = |x: usize| i32::try_from(x).expect("a matrix side fits the LP64 BLAS");
        let (m, n, k) = (int(m), int(n), int(k));
        let (no, one) = (b'N' as c_char, 1f32);
        // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ, each matrix read as its transpose in
        // place: Bᵀ is n × k with leading dimension n, Aᵀ is k × m with leading dimension k. (Of
        // the orientations, this one was the fastest at decoding's shapes.)
        // SAFETY: the lengths were checked against the shapes; `sgemm` writes only `c`.
        unsafe {
            (self.0)(
                &no,
                &no,
                &n,
                &m,
                &k,
                &one,
                b.as_ptr(),
                &n,
                a.as_ptr(),
                &k,
                &beta,
                c.as_mut_ptr(),
                &n,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_major_products_match_their_definition() {
        // The pinned torch for Linux ships MKL.
        let found = sgemm();
        assert!(
            found.is_some() || !cfg!(target_os = "linux"),
            "sgemm_ was not found"
        );
        let Some(g) = found else { return };
        // a [2, 3], b [3, 4]: c = a·b by hand, then c += a·b with β = 1 doubles it.
        let a = [1.0f32, 2.0, 3.0, -1.0, 0.5, 2.0];
        let b = [
            1.0f32, 0.0, 2.0, -1.0, //
            0.0, 1.0, 1.0, 3.0, //
            2.0, -2.0, 0.0, 1.0,
        ];
        let want = [7.0f32, -4.0, 4.0, 8.0, 3.0, -3.5, -1.5, 4.5];
        // β = 0 never reads c (NaN there must not show).
        let mut c = [f32::NAN; 8];
        g.rows(2, 4, 3, &a, &b, 0.0, &mut c);
        assert_eq!(c, want);
        g.rows(2, 4, 3, &a, &b, 1.0, &mut c);
        assert_eq!(c, want.map(|x| 2.0 * x));
        // One row alone.
        let mut c1 = [0f32; 4];
        g.rows(1, 4, 3, &a[3..], &b, 0.0, &mut c1);
        assert_eq!(c1, want[4..]);
    }
}
