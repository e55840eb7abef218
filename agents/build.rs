//! Link-time settings for binaries and tests that use libtorch (see `link_torch` in the root build.rs).
include!("../build_support.rs");
fn main() {
    link_torch();
}
