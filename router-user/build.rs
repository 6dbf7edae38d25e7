//! Builds the eBPF object (router-ebpf) with aya-build into OUT_DIR, where the library
//! embeds it: one artifact, no path to find at run time. Also records the git revision the
//! binaries are built from (`ROUTER_GIT_REVISION`, shown by `--version`).
use std::{path::Path, process::Command};

/// The toolchain that builds the eBPF object: the dated nightly named in `ebpf-toolchain` at
/// the workspace root, which `cargo xtask setup` installs (its LLVM must match bpf-linker's).
const EBPF_TOOLCHAIN: &str = include_str!("../ebpf-toolchain");

fn main() -> anyhow::Result<()> {
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed={manifest_dir}/../ebpf-toolchain");
    git_revision(Path::new(manifest_dir));
    let package = aya_build::Package {
        name: "router-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../router-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf(
        [package],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN.trim()),
    )
}

/// Sets `ROUTER_GIT_REVISION`: the commit (12 hex digits), with `-dirty` if tracked files
/// differ from it, or `unknown` outside a git checkout (a source tarball). Re-run when HEAD
/// moves (HEAD itself, the branch it points to, packed refs), when the index changes, and
/// when the sources change, so that `-dirty` follows edits. `--no-optional-locks`: asking
/// must not rewrite the index, which would make the next build run this again.
fn git_revision(manifest_dir: &Path) {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(manifest_dir)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // Only files that exist: cargo takes a missing one as changed on every build (a
    // repository may have no packed-refs, a packed branch no file of its own).
    let watch_git_file = |file: &str| {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", file])
            && Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    };
    let revision = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) => {
            for file in ["HEAD", "index", "packed-refs"] {
                watch_git_file(file);
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch_git_file(&branch);
            }
            for dir in ["src", "Cargo.toml", "../router-common", "../Cargo.toml"] {
                println!(
                    "cargo:rerun-if-changed={}",
                    manifest_dir.join(dir).display()
                );
            }
            let dirty = git(&[
                "--no-optional-locks",
                "status",
                "--porcelain",
                "--untracked-files=no",
            ])
            .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            }
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=ROUTER_GIT_REVISION={revision}");
}
