//! Connections both ends share: TLS material from files, and gRPC over a unix socket.
use std::path::{Path, PathBuf};

use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM {expected}")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
}

/// The three files of mutual TLS: the CA that signs the other side, and our own
/// certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn read_pem(what: &'static str, path: &Path, expected: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
            expected,
        });
    }
    Ok(bytes)
}

impl TlsFiles {
    fn load(&self) -> Result<(Certificate, Identity), TlsError> {
        let ca = read_pem("CA certificate", &self.ca, "certificate")?;
        let cert = read_pem("certificate", &self.cert, "certificate")?;
        let key = read_pem("private key", &self.key, "private key")?;
        Ok((Certificate::from_pem(ca), Identity::from_pem(cert, key)))
    }

    /// A server that requires every client to present a certificate signed by `ca`.
    pub fn server(&self) -> Result<ServerTlsConfig, TlsError> {
        let (ca, id) = self.load()?;
        Ok(ServerTlsConfig::new().identity(id).client_ca_root(ca))
    }

    /// A client that presents our certificate and trusts only servers signed by `ca`.
    pub fn client(&self, domain: &str) -> Result<ClientTlsConfig, TlsError> {
        let (ca, id) = self.load()?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(ca)
            .identity(id)
            .domain_name(domain))
    }
}

/// A channel to a gRPC server on a unix socket. Connects lazily: errors show on first call.
pub fn unix_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    // The URI is required by the API and unused: the connector below decides where to go.
    Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(
        move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        },
    ))
}
