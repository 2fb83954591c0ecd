//! Connects a client to an agent's `AgentSecure` gRPC API.
//!
//! A client needs three things, all held in a [`RemoteAgent`]: the agent's address, its auth
//! token and its IPC certificate. The agent writes the token and the certificate to files; the
//! certificate file holds one PEM certificate and its private key. The certificate serves both
//! ways: the client trusts it as the server's certificate, and presents it, with its key, as its
//! own client certificate. Every call carries the token as `authorization: Bearer <token>`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::MAX_MESSAGE_SIZE;
use crate::proto::api::v1::agent_secure_client::AgentSecureClient;

/// An error reading an agent's token or certificate file, connecting to the agent, or calling it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpcError {
    /// A token or certificate file could not be read.
    #[error("{what} {path}: {source}")]
    Read {
        /// What the file holds, as the message names it: `auth token` or `IPC certificate`.
        what: &'static str,
        /// The file's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file has no `CERTIFICATE` block or no private key block.
    ///
    /// Only the blocks' markers are checked here; a block whose content is not a valid
    /// certificate or key fails later, as [`IpcError::Connect`].
    #[error("IPC certificate {path}: {reason}")]
    Invalid {
        /// The file's path.
        path: PathBuf,
        /// Which block is missing: `no CERTIFICATE block` or `no PRIVATE KEY block`.
        reason: &'static str,
    },
    /// Connecting failed: the address is not a valid `host:port`, the certificate or key does
    /// not parse, the TCP connection failed or took longer than 5 seconds, or the TLS handshake
    /// failed.
    #[error("cannot connect to the agent at {address}: {source}")]
    Connect {
        /// The agent's address, `host:port`.
        address: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// A call to the agent failed: the agent refused it or answered with an error status.
    #[error("the agent at {address} refused the call: {source}")]
    Call {
        /// The agent's address, `host:port`.
        address: String,
        /// The status the call ended with (boxed: a status is large).
        source: Box<tonic::Status>,
    },
    /// No answer came in time.
    #[error("the agent at {address} did not answer within {after:?}")]
    TimedOut {
        /// The agent's address, `host:port`.
        address: String,
        /// How long the client waited.
        after: Duration,
    },
    /// Too many different requests were under way at once; this one was not made.
    #[error("{limit} requests to the agent are under way already")]
    Busy {
        /// The most requests allowed under way at once.
        limit: usize,
    },
    /// The entity id given is not of the `prefix://uid` form.
    #[error("{0:?} is not an entity id (prefix://uid)")]
    NotAnEntity(String),
}

/// A certificate and its private key, each as one PEM block.
#[derive(Clone, Debug)]
pub struct IpcCert {
    /// The `CERTIFICATE` block, from its `BEGIN` line to its `END` line, ending with a newline.
    pub cert_pem: String,
    /// The `PRIVATE KEY` (or `EC PRIVATE KEY`) block, in the same form.
    pub key_pem: String,
}

impl IpcCert {
    /// Finds the certificate and the private key in a PEM text.
    ///
    /// Takes the first `CERTIFICATE` block, and the first `PRIVATE KEY` block or, when there is
    /// none, the first `EC PRIVATE KEY` block. Text around the blocks is ignored. Only the
    /// markers are checked, not what is between them.
    ///
    /// # Errors
    ///
    /// Returns a message naming the missing block (`no CERTIFICATE block`, `no PRIVATE KEY
    /// block`) when there is no complete certificate block or no complete key block.
    pub fn from_pem(text: &str) -> Result<Self, &'static str> {
        let cert_pem = pem_block(text, &["CERTIFICATE"]).ok_or("no CERTIFICATE block")?;
        let key_pem = pem_block(text, &["PRIVATE KEY", "EC PRIVATE KEY"]).ok_or("no PRIVATE KEY block")?;
        Ok(Self { cert_pem, key_pem })
    }

    /// Reads a certificate file, such as the agent's `ipc_cert.pem`, with [`IpcCert::from_pem`].
    ///
    /// # Errors
    ///
    /// Returns [`IpcError::Read`] when the file cannot be read, and [`IpcError::Invalid`] when it
    /// lacks the certificate block or the key block.
    pub fn read(path: &Path) -> Result<Self, IpcError> {
        let text = std::fs::read_to_string(path).map_err(|source| IpcError::Read {
            what: "IPC certificate",
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(&text).map_err(|reason| IpcError::Invalid { path: path.to_path_buf(), reason })
    }
}

/// Returns the first PEM block of `text` labelled with the first of `labels` that has one, from
/// its `BEGIN` line through its `END` line, plus a newline; `None` when no label has a complete
/// block.
fn pem_block(text: &str, labels: &[&str]) -> Option<String> {
    labels.iter().find_map(|label| {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let start = text.find(&begin)?;
        let stop = text[start..].find(&end)? + start + end.len();
        Some(format!("{}\n", &text[start..stop]))
    })
}

/// An agent to call: the address of its API and the credentials its API asks for.
#[derive(Clone)]
pub struct RemoteAgent {
    /// The `host:port` of its gRPC API, such as `localhost:5001`.
    pub address: String,
    /// The auth token, sent as a bearer token with every call.
    pub token: String,
    /// The agent's IPC certificate: the client trusts it as the server's certificate and
    /// presents it as its own.
    pub cert: IpcCert,
    /// The file the token was read from, which [`RemoteAgent::reload`] reads again; `None` when
    /// the token was set directly, and then `reload` leaves it as it is.
    pub token_file: Option<std::path::PathBuf>,
    /// The file the certificate was read from, which [`RemoteAgent::reload`] reads again; `None`
    /// when the certificate was set directly, and then `reload` leaves it as it is.
    pub cert_file: Option<std::path::PathBuf>,
}

// Prints only the address, so that the token and the private key never reach a log.
impl std::fmt::Debug for RemoteAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAgent").field("address", &self.address).finish_non_exhaustive()
    }
}

/// The gRPC client that [`RemoteAgent::connect`] returns: an `AgentSecure` client whose calls go
/// through [`AddToken`].
pub type Client = AgentSecureClient<tonic::service::interceptor::InterceptedService<Channel, AddToken>>;

impl RemoteAgent {
    /// Creates the agent at `address`, reading its token and certificate from the files the
    /// agent wrote.
    ///
    /// Whitespace around the token, such as a final newline, is removed. Both paths are stored,
    /// so that [`RemoteAgent::reload`] can read the files again.
    ///
    /// # Errors
    ///
    /// Returns [`IpcError::Read`] when either file cannot be read, and [`IpcError::Invalid`]
    /// when the certificate file lacks the certificate block or the key block.
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

    /// Reads the token and certificate files again, and tells whether the token or the
    /// certificate changed.
    ///
    /// The upstream writes new files when, for example, it is reinstalled. A client whose call
    /// was refused or whose TLS handshake failed calls this and, when it returns `true`, retries
    /// at once instead of waiting for its backoff. A token or certificate that was set directly
    /// (its path is `None`) is left as it is. The new values take effect at the next
    /// [`RemoteAgent::connect`].
    ///
    /// # Errors
    ///
    /// Returns [`IpcError::Read`] when a file cannot be read, and [`IpcError::Invalid`] when the
    /// certificate file lacks the certificate block or the key block. The certificate is then
    /// left as it was; but the token file is read first, so a new token read before the
    /// certificate failed is already stored.
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

    /// Connects to the agent and returns a client whose every call carries the bearer token.
    ///
    /// The TLS connection trusts only the agent's IPC certificate, checks it for the name
    /// `localhost` whatever the address, and presents the same certificate as the client's. It
    /// waits at most 5 seconds for the TCP connection, and allows messages of up to
    /// [`MAX_MESSAGE_SIZE`] bytes both ways.
    ///
    /// # Errors
    ///
    /// Returns [`IpcError::Connect`] when the address is not a valid `host:port`, the certificate
    /// or key does not parse, the TCP connection fails or takes longer than 5 seconds, or the
    /// TLS handshake fails.
    pub async fn connect(&self) -> Result<Client, IpcError> {
        let failed = |source| IpcError::Connect { address: self.address.clone(), source };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.cert.cert_pem))
            .identity(Identity::from_pem(&self.cert.cert_pem, &self.cert.key_pem))
            // The agent's IPC certificate names only `localhost` and the loopback addresses, so
            // the name to check is `localhost` even when the address is an IP.
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

/// A tonic interceptor that adds `authorization: Bearer <token>` to every call.
///
/// [`RemoteAgent::connect`] creates it; the header value it holds is private.
#[derive(Clone)]
pub struct AddToken(String);

// Prints only the type's name, so that the token never reaches a log.
impl std::fmt::Debug for AddToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AddToken")
    }
}

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // A token with characters a header cannot carry fails the call with a status instead
        // of a panic.
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
