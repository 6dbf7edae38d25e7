use std::path::PathBuf;

use router_user::{
    Error,
    api::{Request, StateText},
    cluster::write::Cloud,
};

use crate::output::{Api, Failure};

#[derive(clap::Args)]
pub struct Args {
    /// The new desired state (a whole file, as `routerd --config` takes it).
    #[arg(value_name = "FILE", required_unless_present = "file_flag")]
    file: Option<PathBuf>,
    /// The same, named (`-f` is the output format).
    #[arg(long = "file", value_name = "FILE", conflicts_with = "file")]
    file_flag: Option<PathBuf>,
}

/// `routerctl apply FILE`: routerd checks the file whole, writes it to its --config
/// file and applies it, or changes nothing. With `--etcd`: the file is the whole cloud
/// (with its `[placement]` table), written to etcd in one transaction.
pub fn run(api: &Api, args: Args) -> Result<(), Failure> {
    let Some(file) = args.file.or(args.file_flag) else {
        return Err(Failure::Usage("apply: give the desired-state FILE".into()));
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
    if let Some(etcd) = &api.etcd {
        let cloud = Cloud::parse(&text).map_err(Error::from)?;
        return etcd.apply(&api.output, &cloud);
    }
    api.change(&Request::Apply { text })
}

/// `routerctl state`: the desired state routerd runs, as a file.
pub fn show(api: &Api) -> Result<(), Failure> {
    if let Some(etcd) = &api.etcd {
        return etcd.state(&api.output);
    }
    api.show("state", &Request::ShowState, |s: StateText| s.text)
}
