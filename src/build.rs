//! Link-time settings for the aligngym binary, tests and benches: an rpath to libtorch and, on CUDA
//! builds, an explicit link to libtorch_cuda.
include!("build_support.rs");
fn main() {
    link_torch();
}
