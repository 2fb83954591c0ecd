//! The client side of an agent's `AgentSecure` API: where it is and how to prove who we are.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::MAX_MESSAGE_SIZE;
use crate::proto::api::v1::agent_secure_client::AgentSecureClient;

/// Why an agent cannot be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpcError {
    /// The token or certificate file cannot be read.
    #[error("{what} {path}: {source}")]
    Read {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file holds no usable certificate or key.
    #[error("IPC certificate {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: &'static str,
    },
    /// The connection failed.
    #[error("cannot connect to the agent at {address}: {source}")]
    Connect {
        /// `host:port`.
        address: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// A certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct IpcCert {
    /// The `CERTIFICATE` block.
    pub cert_pem: String,
    /// The `PRIVATE KEY` (or `EC PRIVATE KEY`) block.
    pub key_pem: String,
}

impl IpcCert {
    /// Reads the first certificate and key of a PEM text; `None` names the block that is missing.
    pub fn from_pem(text: &str) -> Result<Self, &'static str> {
        let cert_pem = pem_block(text, &["CERTIFICATE"]).ok_or("no CERTIFICATE block")?;
        let key_pem = pem_block(text, &["PRIVATE KEY", "EC PRIVATE KEY"]).ok_or("no PRIVATE KEY block")?;
        Ok(Self { cert_pem, key_pem })
    }

    /// Reads the certificate file.
    pub fn read(path: &Path) -> Result<Self, IpcError> {
        let text = std::fs::read_to_string(path).map_err(|source| IpcError::Read {
            what: "IPC certificate",
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(&text).map_err(|reason| IpcError::Invalid { path: path.to_path_buf(), reason })
    }
}

fn pem_block(text: &str, labels: &[&str]) -> Option<String> {
    labels.iter().find_map(|label| {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let start = text.find(&begin)?;
        let stop = text[start..].find(&end)? + start + end.len();
        Some(format!("{}\n", &text[start..stop]))
    })
}

/// Where another agent's API is and how to prove who we are.
#[derive(Clone)]
pub struct RemoteAgent {
    /// `host:port` of its gRPC API (`localhost:5001`).
    pub address: String,
    /// Its auth token.
    pub token: String,
    /// Its IPC certificate (trusted as the server's, and presented as ours).
    pub cert: IpcCert,
    /// The file the token was read from, read again by [`RemoteAgent::reload`] (`None`: a
    /// token given in code).
    pub token_file: Option<std::path::PathBuf>,
    /// The file the certificate was read from, read again by [`RemoteAgent::reload`] (`None`:
    /// a certificate given in code).
    pub cert_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for RemoteAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAgent").field("address", &self.address).finish_non_exhaustive()
    }
}

/// The client type [`RemoteAgent::connect`] gives.
pub type Client = AgentSecureClient<tonic::service::interceptor::InterceptedService<Channel, AddToken>>;

impl RemoteAgent {
    /// The agent at `address`, with the token and certificate read from their files (as the
    /// agent wrote them).
    pub fn from_files(address: String, token_path: &Path, cert_path: &Path) -> Result<Self, IpcError> {
        let token = std::fs::read_to_string(token_path).map_err(|source| IpcError::Read {
            what: "auth token",
            path: token_path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            address,
            token: token.trim().to_owned(),
            cert: IpcCert::read(cert_path)?,
            token_file: Some(token_path.to_path_buf()),
            cert_file: Some(cert_path.to_path_buf()),
        })
    }

    /// Reads the token and certificate files again (the other agent made new ones, e.g. after
    /// it was reinstalled).
    ///
    /// Returns whether either changed: a client refused, or failing its TLS handshake, retries
    /// at once with the new ones.
    ///
    /// # Errors
    ///
    /// A file cannot be read, or the certificate does not parse; what was read before is kept.
    pub fn reload(&mut self) -> Result<bool, IpcError> {
        let mut changed = false;
        if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path).map_err(|source| IpcError::Read {
                what: "auth token",
                path: path.clone(),
                source,
            })?;
            let token = token.trim();
            if token != self.token {
                self.token = token.to_owned();
                changed = true;
            }
        }
        if let Some(path) = &self.cert_file {
            let cert = IpcCert::read(path)?;
            if cert.cert_pem != self.cert.cert_pem || cert.key_pem != self.cert.key_pem {
                self.cert = cert;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// A connected client whose every call carries the bearer token.
    pub async fn connect(&self) -> Result<Client, IpcError> {
        let failed = |source| IpcError::Connect { address: self.address.clone(), source };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.cert.cert_pem))
            .identity(Identity::from_pem(&self.cert.cert_pem, &self.cert.key_pem))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://{}", self.address))
            .map_err(failed)?
            .tls_config(tls)
            .map_err(failed)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(failed)?;
        Ok(AgentSecureClient::with_interceptor(channel, AddToken(format!("Bearer {}", self.token)))
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE))
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct AddToken(String);

impl std::fmt::Debug for AddToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AddToken")
    }
}

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = self.0.parse().map_err(|_| Status::invalid_argument("the auth token is not a valid header"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_found_and_a_missing_one_is_named() {
        let text = "junk\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\
                    -----BEGIN EC PRIVATE KEY-----\nBBB\n-----END EC PRIVATE KEY-----\n";
        let cert = IpcCert::from_pem(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cert.cert_pem, "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n");
        assert!(cert.key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        assert_eq!(
            IpcCert::from_pem("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----").err(),
            Some("no PRIVATE KEY block")
        );
    }
}
