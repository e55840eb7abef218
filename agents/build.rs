//! Link-time settings for binaries and tests that use libtorch (see `link_torch` in src/build_support.rs).
include!("../src/build_support.rs");
fn main() {
    link_torch();
}
