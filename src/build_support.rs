// Shared by the build scripts of the crates that link libtorch.
//
// torch-sys publishes the torch library folder as DEP_TCH_LIBTORCH_LIB to its direct dependents.
// We give every binary, test and bench an rpath to it, so they run without LD_LIBRARY_PATH, and,
// where the folder holds libtorch_cuda.so, link it with --no-as-needed: nothing references its
// symbols directly, so the linker's default --as-needed would drop it and CUDA would look absent.
fn link_torch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
