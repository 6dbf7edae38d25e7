//! How routerd and routerctl reach an etcd that requires TLS and client certificates
//! (`docs/etcd.md`, "Security"): the CA that signed etcd's certificate, and the client's
//! certificate and key. With etcd's `--client-cert-auth`, the certificate's common name is
//! the etcd user the client acts as, and that user's roles say what it may read and write:
//! a node may only write its own record and statuses.

use std::path::PathBuf;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use crate::Error;

/// The TLS files of an etcd client; all empty: plain `http://` endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct Credentials {
    /// With https:// endpoints: the CA certificate (PEM) that signed etcd's certificate.
    #[arg(long = "etcd-ca", value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// The client certificate (PEM) shown to etcd; its common name is the etcd user
    /// (etcd --client-cert-auth). With --etcd-key.
    #[arg(
        long = "etcd-cert",
        value_name = "FILE",
        global = true,
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long = "etcd-key",
        value_name = "FILE",
        global = true,
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
}

impl Credentials {
    /// Whether any TLS file is given.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some()
    }

    /// `options` with these files' TLS settings (read now, so a missing file is an error
    /// at start, naming it).
    pub fn apply(&self, options: ConnectOptions) -> Result<ConnectOptions, Error> {
        if !self.is_set() {
            return Ok(options);
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(options.with_tls(tls))
    }
}
