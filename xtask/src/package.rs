//! `cargo xtask package`: a Debian package of routerd and routerctl, built with dpkg-deb
//! from a staging tree:
//!
//! - `/usr/sbin/routerd`, `/usr/bin/routerctl` (stripped);
//! - `/lib/systemd/system/routerd.service` (`packaging/routerd.service`);
//! - `/etc/routerd/routerd.toml`, a conffile running no router (`packaging/routerd.toml`);
//! - `/var/lib/routerd/`, routerd's working directory under systemd;
//! - bash, zsh and fish completions and man pages, which the binaries print from their own
//!   argument definitions (`ROUTER_GENERATE`, `router_user::generate`).

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{output, run};

/// The package's name (and the name of its documentation directory).
const PACKAGE: &str = "routerd";
/// What the binaries run or load: `ip` (namespaces), libnftables (the slow path's NAT rules),
/// `conntrack` (flushing the kernel's sessions when a floating IP moves).
const DEPENDS: &str = "libc6, iproute2, libnftables1, conntrack";

/// (binary, where it goes in the package)
const BINARIES: [(&str, &str); 2] = [("routerd", "usr/sbin"), ("routerctl", "usr/bin")];

/// Builds `<out>/routerd_<version>_<arch>.deb` from the binaries in `bin_dir`; returns its path.
pub fn build(workspace: &Path, bin_dir: &Path, out: &Path) -> Result<PathBuf> {
    let staging = out.join("staging");
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    let version = version(&bin_dir.join("routerd"))?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg --print-architecture")?;
    let arch = arch.trim();

    for (bin, dir) in BINARIES {
        let from = bin_dir.join(bin);
        let to = staging.join(dir).join(bin);
        copy(&from, &to, 0o755)?;
        run(Command::new("strip").arg("--strip-debug").arg(&to))?;
        for shell in ["bash", "zsh", "fish"] {
            let path = match shell {
                "bash" => format!("usr/share/bash-completion/completions/{bin}"),
                "zsh" => format!("usr/share/zsh/vendor-completions/_{bin}"),
                _ => format!("usr/share/fish/vendor_completions.d/{bin}.fish"),
            };
            write(&staging.join(path), &generate(&from, shell)?, 0o644)?;
        }
        let man = staging.join(format!("usr/share/man/man1/{bin}.1"));
        write(&man, &generate(&from, "man")?, 0o644)?;
        run(Command::new("gzip").args(["-9n", "-f"]).arg(&man))?;
    }
    let packaging = workspace.join("packaging");
    copy(
        &packaging.join("routerd.service"),
        &staging.join("lib/systemd/system/routerd.service"),
        0o644,
    )?;
    copy(
        &packaging.join("routerd.toml"),
        &staging.join("etc/routerd/routerd.toml"),
        0o644,
    )?;
    mkdir(&staging.join("var/lib/routerd"))?;
    copy(
        &workspace.join("README.md"),
        &staging.join(format!("usr/share/doc/{PACKAGE}/README.md")),
        0o644,
    )?;

    let control = format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: neutron-router-ebpf developers <root@localhost>\n\
         Depends: {DEPENDS}\n\
         Section: net\n\
         Priority: optional\n\
         Description: eBPF fast path for Neutron-style virtual routers\n \
         routerd forwards, NATs and filters the traffic of a node's Neutron-style\n \
         routers in XDP or tc programs; routerctl is its command line.\n"
    );
    write(&staging.join("DEBIAN/control"), control.as_bytes(), 0o644)?;
    write(
        &staging.join("DEBIAN/conffiles"),
        b"/etc/routerd/routerd.toml\n",
        0o644,
    )?;
    // systemd learns of the new unit; enabling it is the operator's choice (the default
    // configuration runs no router).
    write(
        &staging.join("DEBIAN/postinst"),
        b"#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n",
        0o755,
    )?;

    let deb = out.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "-z6", "--build"])
        .arg(&staging)
        .arg(&deb))?;
    fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    Ok(deb)
}

/// The package version: the second word of `routerd --version` (`routerd 0.1.0 (git ...)`).
fn version(routerd: &Path) -> Result<String> {
    let line = output(Command::new(routerd).arg("--version"))
        .with_context(|| format!("{} --version", routerd.display()))?;
    match line.split_whitespace().nth(1) {
        Some(v) if v.starts_with(|c: char| c.is_ascii_digit()) => Ok(v.to_string()),
        _ => bail!("{} --version says {line:?}", routerd.display()),
    }
}

/// What `bin` prints with `ROUTER_GENERATE=what` (a man page, a completion script).
fn generate(bin: &Path, what: &str) -> Result<Vec<u8>> {
    let out = Command::new(bin)
        .env("ROUTER_GENERATE", what)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "ROUTER_GENERATE={what} {}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", dir.display()))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode)
}

fn write(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        mkdir(dir)?;
    }
    fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}
