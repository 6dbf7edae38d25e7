//! Certificates for a test etcd with TLS, made with the openssl command line: a CA of the
//! test's own, etcd's server certificate for 127.0.0.1, and a client certificate per etcd
//! user (its common name is the user, as etcd's `--client-cert-auth` reads it). ECDSA P-256
//! keys: quick to make. Everything lives in one directory the caller removes.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use router_user::cluster::Credentials;

pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA and etcd's server certificate in `dir` (created).
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("the certificates' directory");
        let pki = Self {
            dir: dir.to_path_buf(),
        };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=router-tests-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        pki.issue(
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        );
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A key and a certificate for common name `name`, signed by the CA, with `extensions`.
    fn issue(&self, name: &str, extensions: &str) {
        let ext = format!("{name}.ext");
        std::fs::write(self.dir.join(&ext), extensions).expect("the extensions file");
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A client certificate for etcd user `user`, as routerd's and routerctl's options take it.
    pub fn client(&self, user: &str) -> Credentials {
        if !self.path(&format!("{user}.crt")).exists() {
            self.issue(user, "extendedKeyUsage=clientAuth\n");
        }
        Credentials {
            ca: Some(self.path("ca.crt")),
            cert: Some(self.path(&format!("{user}.crt"))),
            key: Some(self.path(&format!("{user}.key"))),
        }
    }
}

/// `--etcd-ca`, `--etcd-cert`, `--etcd-key` for `credentials`.
pub fn args(credentials: &Credentials) -> Vec<String> {
    let mut args = Vec::new();
    for (flag, path) in [
        ("--etcd-ca", &credentials.ca),
        ("--etcd-cert", &credentials.cert),
        ("--etcd-key", &credentials.key),
    ] {
        if let Some(path) = path {
            args.push(flag.to_string());
            args.push(path.display().to_string());
        }
    }
    args
}
