//! The controller of the router fast path, as a library: `routerd` and `routerctl` are thin
//! shells over it.

pub mod api;
pub mod config;
pub mod conntrack;
pub mod datapath;
pub mod error;
pub mod firewall;
pub mod metrics;
pub mod monitor;
pub mod netlink;
pub mod netns;
pub mod paths;
pub mod policy;
pub mod router;
pub mod slowpath;
pub mod stats;
pub mod table;
pub mod testrun;
pub mod trace;

pub use error::{ConfigError, Error};
