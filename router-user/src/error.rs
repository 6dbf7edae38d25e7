//! The one error type of the controller library.

use thiserror::Error;

/// A desired state that cannot be applied; nothing was changed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Syntax(String),
    #[error("invalid configuration: {key} = \"{value}\": {problem}")]
    Invalid {
        key: String,
        value: String,
        problem: String,
    },
}

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("router {router}: namespace {namespace}: {source}")]
    Namespace {
        router: String,
        namespace: String,
        #[source]
        source: std::io::Error,
    },
    #[error("router {router}: interface {interface} does not exist in namespace {namespace}")]
    InterfaceMissing {
        router: String,
        interface: String,
        namespace: String,
    },
    #[error("router {router}: netlink: {what}: {source}")]
    Netlink {
        router: String,
        what: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] Box<aya::EbpfError>),
    #[error("router {router}: {what}: {source}")]
    Program {
        router: String,
        what: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("{what}: {source}")]
    Map {
        what: String,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("{what}: {source}")]
    Pin {
        what: String,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    #[error("bpffs is not mounted at {0}: run `cargo xtask setup` or `mount -t bpf bpf {0}`")]
    NoBpffs(&'static str),
    #[error("router {0} is not running (no pinned maps under {1})")]
    NotRunning(String, String),
    /// routerd's API socket cannot be connected to.
    #[error("cannot reach routerd at {path}: {source}")]
    Unreachable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// routerd refused a request: its code, and a message naming what is wrong.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// A router was not started: routerd was asked to stop first.
    #[error("router {0} not started: routerd is stopping")]
    Cancelled(String),
    /// routerd did not answer in time (it accepted the connection, or not even that).
    #[error("routerd at {path} did not answer within {seconds} s")]
    Timeout { path: String, seconds: f64 },
    /// etcd (the cluster's desired state) did not answer or refused a request.
    #[error("etcd: {what}: {source}")]
    Etcd {
        what: String,
        #[source]
        source: Box<etcd_client::Error>,
    },
    /// A change was written to etcd, but the nodes that host it did not report it applied
    /// in time (`routerctl --etcd URL ... --wait`): which did not, and what they report.
    #[error(
        "written to etcd at revision {revision}, but not applied within {seconds} s: {pending}"
    )]
    NotApplied {
        revision: i64,
        seconds: f64,
        pending: String,
    },
    /// routerd's API socket cannot be served.
    #[error("API socket {path}: {problem}")]
    Socket { path: String, problem: String },
    /// Neutron's API objects that cannot be read, or mapped to a desired state
    /// (`routerctl import neutron`): the object (kind and id) and why.
    #[error("{object}: {problem}")]
    Import { object: String, problem: String },
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub fn import(object: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Import {
            object: object.into(),
            problem: problem.into(),
        }
    }

    pub fn etcd(what: impl Into<String>, source: etcd_client::Error) -> Self {
        Error::Etcd {
            what: what.into(),
            source: Box::new(source),
        }
    }

    pub fn map(what: impl Into<String>, source: aya::maps::MapError) -> Self {
        Error::Map {
            what: what.into(),
            source: Box::new(source),
        }
    }
}
