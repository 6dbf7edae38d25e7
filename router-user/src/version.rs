//! What a binary is: the package version, the git revision it was built from and the eBPF
//! object it embeds. `routerd --version` and `routerctl --version` print it and routerd logs
//! it at start, so that a report from a node names exactly the build that ran.

/// The commit the binaries were built from (12 hex digits), with `-dirty` when tracked files
/// differed from it, or `unknown` when built outside a git checkout (see `build.rs`).
pub const GIT_REVISION: &str = env!("ROUTER_GIT_REVISION");

/// `0.1.0 (git 0123456789ab, ebpf <digest>)`, the digest being
/// [`crate::datapath::object_digest`].
pub fn long() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        format!(
            "{} (git {GIT_REVISION}, ebpf {})",
            env!("CARGO_PKG_VERSION"),
            crate::datapath::object_digest()
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_version_revision_and_object() {
        let line = super::long();
        assert!(line.starts_with(concat!(env!("CARGO_PKG_VERSION"), " (git ")));
        assert!(line.ends_with(&format!(", ebpf {})", crate::datapath::object_digest())));
        let revision = super::GIT_REVISION;
        let commit = revision.strip_suffix("-dirty").unwrap_or(revision);
        assert!(
            commit == "unknown"
                || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
            "{revision}"
        );
    }
}
