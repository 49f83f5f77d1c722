// Links libflashsdpa from FLASHSDPA_LIB_DIR (the build tree or an installed
// prefix's lib directory), with an rpath so the program runs from there.
fn main() {
    println!("cargo:rerun-if-env-changed=FLASHSDPA_LIB_DIR");
    let dir = std::env::var("FLASHSDPA_LIB_DIR")
        .expect("set FLASHSDPA_LIB_DIR to the directory holding libflashsdpa.so");
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-lib=dylib=flashsdpa");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
}
