//! The controller of the router fast path, as a library: `routerd` and `routerctl` are thin
//! shells over it.

pub mod api;
pub mod cluster;
pub mod config;
pub mod conntrack;
pub mod datapath;
pub mod dvr;
pub mod error;
pub mod generate;
pub mod ha;
pub mod import;
pub mod maps;
pub mod metrics;
pub mod monitor;
pub mod netlink;
pub mod netns;
pub mod node;
pub mod notify;
pub mod paths;
pub mod policy;
pub mod reconcile;
pub mod router;
pub mod server;
pub mod signals;
pub mod slowpath;
pub mod stale;
pub mod stats;
pub mod table;
pub mod testrun;
pub mod trace;
pub mod version;

pub use error::{ConfigError, Error};
