//! The HTTPS client for the Cloud Controller and the UAA: hyper with rustls, using the ring crypto
//! provider and a TLS config of our own (trusting the system's roots and `ca_file`, or verifying
//! no certificate with `skip_ssl_validation`).
//!
//! The crypto provider is passed to rustls explicitly, so that nothing depends on a process-wide
//! default provider being installed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The largest body read; a larger one fails the request. A page of 5,000 apps with their
/// metadata fits in it many times.
const MAX_BODY: usize = 64 << 20;

/// An HTTPS client (it speaks plain HTTP too) whose every request has a deadline.
#[derive(Clone, Debug)]
pub struct Https {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

/// The certificate verifier of `skip_ssl_validation`: accepts any certificate, but still checks
/// the handshake's signatures against the certificate presented.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Https {
    /// Creates a client that trusts the system's root certificates and those of `ca_file`, or,
    /// with `skip_verification`, any certificate. Each request, body included, must finish
    /// within `timeout`.
    ///
    /// Without `skip_verification`, reads the system's root certificates (leaving out any that
    /// does not parse) and `ca_file`; with it, reads neither.
    ///
    /// # Errors
    ///
    /// Returns a message when `ca_file` cannot be read, holds no PEM certificate or holds one that
    /// is not valid, or when the TLS config cannot be built.
    pub fn new(ca_file: Option<&Path>, skip_verification: bool, timeout: Duration) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let config = if skip_verification {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if let Some(ca) = ca_file {
                let certs = CertificateDer::pem_file_iter(ca)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
                if certs.is_empty() {
                    return Err(format!("{}: no PEM certificate in it", ca.display()));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_or_http().enable_http1().build();
        Ok(Self { client: Client::builder(TokioExecutor::new()).build(connector), timeout })
    }

    /// Sends one request and returns the status and the whole body, whatever the status.
    ///
    /// # Errors
    ///
    /// Returns a message, starting with the URL, when the request cannot be built or sent, when
    /// the body cannot be read or is larger than 64 MiB, or when the exchange takes longer than the
    /// client's timeout.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let mut request = Request::builder().method(method).uri(url);
        if let Some(h) = request.headers_mut() {
            h.extend(headers);
        }
        let request = request.body(Full::new(body)).map_err(|e| format!("{url}: {e}"))?;
        let exchange = async {
            let response =
                self.client.request(request).await.map_err(|e| format!("{url}: {}", crate::garden::chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("{url}: reading the body: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("{url}: no answer within {} s", self.timeout.as_secs()))?
    }
}

/// Returns the value of an HTTP Basic `Authorization` header: `Basic <base64(user:password)>`,
/// in standard base64 with padding (RFC 4648).
pub fn basic_auth(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let mut out = String::with_capacity(6 + input.len().div_ceil(3) * 4);
    out.push_str("Basic ");
    // Each group of three bytes is packed into a 24-bit number, first byte highest, and read back
    // as four 6-bit indices into the alphabet; a short last group writes `=` for each index it
    // has no bits for.
    for chunk in input.as_bytes().chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_rfc_4648_base64() {
        assert_eq!(basic_auth("Aladdin", "open sesame"), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(basic_auth("a", "b"), "Basic YTpi");
        assert_eq!(basic_auth("ab", ""), "Basic YWI6");
    }
}
