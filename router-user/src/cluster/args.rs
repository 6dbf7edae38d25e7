//! routerd's arguments for following etcd, as a group the daemon takes whole (flattened into
//! its own), and the process's paths that several routerd on one machine set apart.

use std::{path::PathBuf, time::Duration};

use super::{Cluster, DEFAULT_PREFIX, Options};
use crate::{Error, paths};

/// How routerd follows etcd; without `--etcd` it follows its file.
#[derive(Clone, Debug, clap::Args)]
pub struct ClusterArgs {
    /// Follow the desired state in etcd instead of the file: the routers placed on this node
    /// (docs/etcd.md). Endpoints separated by commas, e.g.
    /// http://10.0.0.1:2379,http://10.0.0.2:2379. The API then answers queries only.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// This node's name: in etcd, placements name nodes by it (default: the host name);
    /// with a file, distributed routers name nodes by it (docs/dvr.md).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// The prefix of every key in etcd.
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// Seconds the node's lease lives without renewal (renewed every third of it): a node
    /// that dies is gone from `routerctl node list` this long after.
    #[arg(long, value_name = "SECONDS", default_value_t = super::DEFAULT_LEASE_TTL.as_secs())]
    pub lease_ttl: u64,
    /// Where routerd keeps the last desired state it applied from etcd, to start from while
    /// etcd is away.
    #[arg(long, value_name = "DIR", env = paths::STATE_DIR_ENV, default_value = paths::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub credentials: super::Credentials,
    /// Take part in HA (routers placed on several nodes, docs/ha.md): the address this node
    /// listens on for its standbys' session sync, and advertises in etcd when active, e.g.
    /// 10.0.0.5:7946. Without it, a router placed on several nodes stands by here forever.
    #[arg(long, value_name = "ADDR:PORT", requires = "etcd")]
    pub ha_listen: Option<std::net::SocketAddr>,
    /// The namespace (`/run/netns/NAME`) holding the overlay devices of distributed routers
    /// (`vxlan-<vni>`, docs/dvr.md); default: routerd's own.
    #[arg(long, value_name = "NAME")]
    pub overlay_netns: Option<String>,
}

impl ClusterArgs {
    /// This node for distributed routers from a file (`--node`, `--overlay-netns`); `None`
    /// with etcd (its routers arrive as the node's copies) or without `--node`.
    pub fn file_node(&self) -> Result<Option<crate::dvr::ThisNode>, Error> {
        let (None, Some(name)) = (&self.etcd, &self.node) else {
            return Ok(None);
        };
        super::keys::check_node_name(name)?;
        Ok(Some(crate::dvr::ThisNode {
            name: name.clone(),
            overlay_netns: self.overlay_netns.clone(),
        }))
    }

    /// The options, if routerd follows etcd.
    pub fn options(&self) -> Result<Option<Options>, Error> {
        let Some(endpoints) = &self.etcd else {
            return Ok(None);
        };
        let node = match &self.node {
            Some(n) => n.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_err(|e| Error::io("reading the host name", e))?
                .trim()
                .to_string(),
        };
        let options = Options {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
            prefix: self.etcd_prefix.clone(),
            node,
            lease_ttl: Duration::from_secs(self.lease_ttl),
            state_dir: self.state_dir.clone(),
            debounce: super::sync::DEBOUNCE,
            credentials: self.credentials.clone(),
            overlay_netns: self.overlay_netns.clone(),
        };
        options.check()?;
        Ok(Some(options))
    }

    /// The HA side's options, if routerd takes part in HA.
    pub fn ha_options(&self) -> Result<Option<crate::ha::Options>, Error> {
        let (Some(listen), Some(options)) = (self.ha_listen, self.options()?) else {
            return Ok(None);
        };
        Ok(Some(crate::ha::Options {
            endpoints: options.endpoints,
            credentials: options.credentials,
            prefix: options.prefix,
            node: options.node,
            listen,
        }))
    }

    /// Starts following etcd (see [`Cluster::start`]) on `runtime`, if asked to.
    pub fn start(&self, runtime: &tokio::runtime::Runtime) -> Result<Option<Cluster>, Error> {
        match self.options()? {
            Some(options) => runtime.block_on(Cluster::start(options)).map(Some),
            None => Ok(None),
        }
    }
}

/// Where this routerd keeps its pins and run-time files: apart from another routerd's on
/// the same machine when they differ.
#[derive(Clone, Debug, clap::Args)]
pub struct RootArgs {
    /// The directory under bpffs that holds the routers' pins.
    #[arg(long, value_name = "DIR", env = paths::PIN_ROOT_ENV, default_value = paths::DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// The run-time directory (router info, pin owners, slow-path rules) routerctl reads.
    #[arg(long, value_name = "DIR", env = paths::RUN_DIR_ENV, default_value = paths::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
}

impl RootArgs {
    /// Sets them for this process (before any path is used).
    pub fn apply(&self) -> Result<(), Error> {
        if !self.pin_root.starts_with(paths::BPFFS) {
            return Err(crate::ConfigError::Invalid {
                key: "pin-root".into(),
                value: self.pin_root.display().to_string(),
                problem: format!("pins live under bpffs, {}", paths::BPFFS),
            }
            .into());
        }
        if paths::set_roots(&self.pin_root, &self.run_dir) {
            Ok(())
        } else {
            Err(Error::io(
                "setting the pin root and run directory",
                std::io::Error::other("they were used before being set"),
            ))
        }
    }
}
