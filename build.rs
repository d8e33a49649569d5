//! Makes the binary find libtorch at run time without LD_LIBRARY_PATH (an rpath to
//! libtorch's lib dir) and links libtorch_cuda even though no symbol of it is used,
//! so that `tch::Cuda::is_available()` is true on a machine with a GPU. Without the
//! `--no-as-needed` the linker drops libtorch_cuda and CUDA is silently never used.
fn main() {
    git_state();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:rustc-env=REGLAB_LIBTORCH_VERSION=unknown");
        return;
    };
    println!("cargo:rustc-env=REGLAB_LIBTORCH_VERSION={}", libtorch_version(&lib));
    println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
    let dir = std::path::Path::new(&lib);
    let has_cuda = ["libtorch_cuda.so", "torch_cuda.dll", "libtorch_cuda.dylib"]
        .iter()
        .any(|f| dir.join(f).exists());
    if has_cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// The libtorch version: `torch/version.py` of a PyTorch wheel, or `build-version` of a
/// standalone libtorch, found beside the lib directory.
fn libtorch_version(lib: &str) -> String {
    let root = std::path::Path::new(lib).parent().map(|p| p.to_path_buf()).unwrap_or_default();
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("__version__") {
                return rest.trim_start_matches([' ', '=']).trim().trim_matches(['\'', '"']).to_string();
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(root.join("build-version")) {
        return text.trim().to_string();
    }
    "unknown".to_string()
}

/// The commit the binary is built from and whether the tree had changes, for `run.json`: the
/// code that ran is the code that was compiled, whatever the checkout looks like later.
fn git_state() {
    for path in ["src", "Cargo.toml", "Cargo.lock", "build.rs", ".git/HEAD", ".git/index", ".git/refs"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) => (!s.is_empty()).to_string(),
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=REGLAB_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=REGLAB_GIT_DIRTY={dirty}");
}
