use std::path::PathBuf;

use router_user::{
    Error,
    api::{Request, StateText},
};

use crate::output::Api;

#[derive(clap::Args)]
pub struct Args {
    /// The new desired state (a whole file, as `routerd --config` takes it).
    #[arg(long = "file", short = 'f')]
    file: PathBuf,
}

/// `routerctl apply -f FILE`: routerd checks the file whole, writes it to its --config
/// file and applies it, or changes nothing.
pub fn run(api: &Api, args: Args) -> Result<(), Error> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| Error::io(format!("reading {}", args.file.display()), e))?;
    api.change(&Request::Apply { text })
}

/// `routerctl state`: the desired state routerd runs, as a file.
pub fn show(api: &Api) -> Result<(), Error> {
    api.show(&Request::ShowState, |s: StateText| s.text)
}
