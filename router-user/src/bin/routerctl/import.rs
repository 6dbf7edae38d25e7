//! `routerctl import neutron PATH`: Neutron's routers, as the openstack client prints them
//! (`-f json`), as a desired-state file (`docs/neutron-import.md`). Reads files only: it
//! needs neither routerd nor root. With `--etcd` the routers are written to etcd instead.

use std::path::PathBuf;

use router_user::{
    Error,
    config::Mode,
    import::{self, ImportOptions, NeutronObjects},
};
use serde::Serialize;

use crate::{
    etcd::Writer,
    output::{Failure, Format, Output},
};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Neutron's routers, ports, subnets and floating IPs (`openstack ... -f json` output)
    /// as a desired-state file: router ids, interface names and floating IP ids as Neutron
    /// has them.
    Neutron(NeutronArgs),
}

#[derive(clap::Args)]
pub struct NeutronArgs {
    /// A directory of `openstack ... -f json` outputs (every *.json file in it), or one
    /// JSON file (an object or an array of them).
    #[arg(value_name = "PATH")]
    input: PathBuf,
    /// Write the desired state to FILE (replacing it whole) instead of standard output.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: Option<PathBuf>,
    /// The routers' mode (tc works on every interface; auto runs native XDP where the
    /// interface keeps up with it, TC elsewhere; xdp wants native XDP on all).
    #[arg(long, value_enum, default_value_t = ImportMode::Tc)]
    mode: ImportMode,
    /// Only this router (its Neutron id); repeatable. Default: every router of the input.
    #[arg(long = "router", value_name = "ID")]
    routers: Vec<String>,
    /// With --etcd: place every imported router on this node (without: a router keeps its
    /// placement, a new one is stored unplaced).
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ImportMode {
    Tc,
    Auto,
    Xdp,
}

/// What `-f json` prints: the file and what was left out of it.
#[derive(Serialize)]
struct ImportResult {
    text: String,
    skipped: Vec<String>,
}

/// Imports, and prints the file (or writes it to `-o FILE`); with `--etcd` (`etcd`), writes
/// the routers to etcd instead, in one transaction as `apply` does, the other routers left
/// alone.
pub fn run(output: &Output, etcd: Option<&Writer>, command: Command) -> Result<(), Failure> {
    let Command::Neutron(args) = command;
    if etcd.is_some() && args.out.is_some() {
        return Err(Failure::Usage(
            "import: -o FILE and --etcd: write to one or the other".into(),
        ));
    }
    if etcd.is_none() && args.node.is_some() {
        return Err(Failure::Usage(
            "import --node places the routers in etcd: give --etcd URL".into(),
        ));
    }
    let objects = NeutronObjects::load(&args.input)?;
    let options = ImportOptions {
        mode: match args.mode {
            ImportMode::Tc => Mode::Tc,
            ImportMode::Auto => Mode::Auto,
            ImportMode::Xdp => Mode::Xdp,
        },
        routers: args.routers,
    };
    let imported = import::import(&objects, &options)?;
    let text = imported.state.to_toml();
    for line in &imported.skipped {
        eprintln!("routerctl: skipped: {line}");
    }
    if let Some(etcd) = etcd {
        return etcd.merge(output, &imported.state, args.node.as_deref());
    }
    match &args.out {
        Some(path) => {
            let tmp = path.with_extension("toml.new");
            std::fs::write(&tmp, &text)
                .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
            std::fs::rename(&tmp, path).map_err(|e| {
                Error::io(
                    format!("renaming {} to {}", tmp.display(), path.display()),
                    e,
                )
            })?;
            if matches!(output.format, Format::Json) {
                let result = ImportResult {
                    text,
                    skipped: imported.skipped,
                };
                output.print("neutron_import", &result, String::new)?;
            }
        }
        None => {
            let result = ImportResult {
                text,
                skipped: imported.skipped,
            };
            let text = result.text.clone();
            output.print("neutron_import", &result, || text)?;
        }
    }
    Ok(())
}
