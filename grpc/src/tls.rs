//! TLS for every gRPC listener and client, from PEM files named in the configuration.
//!
//! One set of files per process: `tls.cert_file` and `tls.key_file` are its identity, served
//! by its listener and presented as a client certificate when it dials others (so a node's
//! certificate, which names its node ID, identifies it to the primary it replicates from);
//! `tls.ca_file` is the CA that peers' certificates must chain to, used to verify servers
//! and, with `tls.require_client_cert`, clients. rustls (with ring) does the work; reqwest
//! uses the same stack for Consul.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The TLS files of one process (see the module docs). All `None`: TLS off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain of this process (`tls.cert_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (`tls.key_file`).
    pub key_file: Option<PathBuf>,
    /// PEM CA certificate(s) peers must chain to (`tls.ca_file`).
    pub ca_file: Option<PathBuf>,
    /// Listeners refuse clients without a certificate signed by `ca_file`
    /// (`tls.require_client_cert`).
    pub require_client_cert: bool,
}

impl From<&ec_config::TlsConfig> for TlsFiles {
    /// The `tls.*` settings of a loaded configuration.
    fn from(c: &ec_config::TlsConfig) -> TlsFiles {
        TlsFiles {
            cert_file: c.cert_file.clone(),
            key_file: c.key_file.clone(),
            ca_file: c.ca_file.clone(),
            require_client_cert: c.require_client_cert,
        }
    }
}

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the TLS {what} {} ({key}): {source}", path.display())]
    Read {
        /// What the file should hold.
        what: &'static str,
        /// The configuration key that names it.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The settings are incomplete or contradict each other.
    #[error("TLS settings: {0}")]
    Incomplete(String),
}

fn read(what: &'static str, key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        key,
        path: path.to_owned(),
        source,
    })
}

impl TlsFiles {
    /// Whether any TLS file is configured.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some() || self.ca_file.is_some()
    }

    fn identity(&self) -> Result<Option<Identity>, TlsError> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Ok(Some(Identity::from_pem(
                read("certificate", "tls.cert_file", cert)?,
                read("private key", "tls.key_file", key)?,
            ))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::Incomplete(
                "tls.cert_file is set but tls.key_file is not; set both (or neither)".into(),
            )),
            (None, Some(_)) => Err(TlsError::Incomplete(
                "tls.key_file is set but tls.cert_file is not; set both (or neither)".into(),
            )),
        }
    }

    fn ca(&self) -> Result<Option<Certificate>, TlsError> {
        self.ca_file
            .as_deref()
            .map(|ca| read("CA certificate", "tls.ca_file", ca).map(Certificate::from_pem))
            .transpose()
    }

    /// The listener's TLS, or `None` when TLS is off. A listener needs a certificate and key;
    /// `require_client_cert` also needs the CA.
    pub fn server(&self) -> Result<Option<ServerTlsConfig>, TlsError> {
        if !self.enabled() {
            return Ok(None);
        }
        let Some(identity) = self.identity()? else {
            return Err(TlsError::Incomplete(
                "a TLS listener needs tls.cert_file and tls.key_file (scripts/dev-certs.sh makes a set for local clusters)".into(),
            ));
        };
        let mut config = ServerTlsConfig::new().identity(identity);
        match (self.require_client_cert, self.ca()?) {
            (true, Some(ca)) => config = config.client_ca_root(ca),
            (true, None) => {
                return Err(TlsError::Incomplete(
                    "tls.require_client_cert needs tls.ca_file, the CA that client certificates must chain to".into(),
                ));
            }
            (false, _) => {}
        }
        Ok(Some(config))
    }

    /// The client side of TLS (verify servers against the CA, present this process's
    /// certificate when one is configured), or `None` when TLS is off.
    pub fn client(&self) -> Result<Option<ClientTlsConfig>, TlsError> {
        if !self.enabled() {
            return Ok(None);
        }
        let Some(ca) = self.ca()? else {
            return Err(TlsError::Incomplete(
                "a TLS client needs tls.ca_file, the CA that servers' certificates chain to".into(),
            ));
        };
        let mut config = ClientTlsConfig::new().ca_certificate(ca);
        if let Some(identity) = self.identity()? {
            config = config.identity(identity);
        }
        Ok(Some(config))
    }
}
