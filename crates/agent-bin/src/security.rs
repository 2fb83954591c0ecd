//! The IPC auth token and TLS certificate, which the agent creates at its first start, as the
//! Datadog Agent does.
//!
//! - The token is in `auth_token_file_path` (default `auth_token` beside the config file): 64
//!   random hex characters, in a file created with mode 0600. Clients send it as
//!   `authorization: Bearer <token>`. A token shorter than [`MIN_TOKEN_LEN`] characters is
//!   refused.
//! - The certificate is in `ipc_cert_file_path` (default `ipc_cert.pem` beside the token file):
//!   one PEM `CERTIFICATE` and one `PRIVATE KEY`, ECDSA P-256, self-signed, for `localhost`,
//!   `127.0.0.1` and `::1`, for server and client auth, mode 0600. Unlike Datadog's, it is not
//!   marked as a CA: rustls refuses a CA certificate as a server's own, and Go, BoringSSL
//!   (grpcio) and rustls clients that pin a self-signed leaf trust it the same way.
//! - Either file is refused, with the command that fixes it, when its group or other users have
//!   any permission on it, or when another user owns it. A new file is written atomically: to a
//!   temporary file created with `O_EXCL`, then renamed over the path, so that a symlink at the
//!   path is replaced, never followed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use wm_ipc::IpcCert;

/// Why a request's `authorization` value was refused (see [`check_bearer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerRefused {
    /// No `authorization` value, or one of another scheme than `Bearer`.
    NotBearer,
    /// A bearer token, but not the agent's.
    WrongToken,
}

/// Checks an `authorization` value, from an HTTP header or gRPC metadata, against `token`.
///
/// The scheme must be `Bearer`, in any case; whitespace around the token is ignored. The token's
/// bytes are compared in constant time, so that how long the check takes tells a caller nothing
/// about how much of a guess was right.
///
/// # Errors
///
/// Returns [`BearerRefused::NotBearer`] when the value is missing or of another scheme, and
/// [`BearerRefused::WrongToken`] when the token is not `token`. The gRPC API answers each with
/// the Datadog Agent's message.
pub fn check_bearer(value: Option<&str>, token: &str) -> Result<(), BearerRefused> {
    let value = value.ok_or(BearerRefused::NotBearer)?;
    let (scheme, given) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerRefused::NotBearer);
    }
    let (given, token) = (given.trim().as_bytes(), token.as_bytes());
    let same = given.len() == token.len() && given.iter().zip(token).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same { Ok(()) } else { Err(BearerRefused::WrongToken) }
}

/// Why the token or certificate file cannot be read, created or used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The directory the file would be created in does not exist.
    #[error("{what} {path}: its directory {dir} does not exist (create it, or set {key})")]
    MissingDirectory {
        /// What the file is: `auth token file` or `IPC certificate`.
        what: &'static str,
        /// The file's path.
        path: String,
        /// The missing directory.
        dir: String,
        /// The config key that sets the file's path.
        key: &'static str,
    },
    /// Reading or writing the file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the file is: `auth token file` or `IPC certificate`.
        what: &'static str,
        /// The file's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file cannot be used: other users may access it, another user owns it, or what it
    /// holds is not a usable token or certificate.
    #[error("{what} {path}: {reason}")]
    Invalid {
        /// What the file is: `auth token file` or `IPC certificate`.
        what: &'static str,
        /// The file's path.
        path: String,
        /// What is wrong, with the command that fixes it when there is one.
        reason: String,
    },
}

/// The shortest token accepted, in characters.
pub const MIN_TOKEN_LEN: usize = 32;

/// Writes `content` to `path` with mode 0600, atomically.
///
/// The content goes to a new temporary file beside `path`, with a random name and created with
/// `O_EXCL` so that it can never be an existing file or a symlink. That file is synced, then
/// renamed over `path`, so a reader finds the old file or the whole new one. The temporary file
/// is removed if a step fails.
fn create_0600(what: &'static str, key: &'static str, path: &Path, content: &[u8]) -> Result<(), SecurityError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(SecurityError::MissingDirectory {
            what,
            path: path.display().to_string(),
            dir: dir.display().to_string(),
            key,
        });
    }
    let io = |source| SecurityError::Io { what, path: path.display().to_string(), source };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| io(std::io::Error::other(e)))?;
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let temp = dir.join(format!(".{name}.{nonce}.tmp"));
    let written = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
        file.write_all(content)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written.map_err(io)
}

/// Refuses a secret file that its group or other users have any permission on, or that another
/// user owns; the error gives the command that fixes it.
fn check_private(what: &'static str, path: &Path) -> Result<(), SecurityError> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display().to_string();
    let meta = fs::metadata(path).map_err(|source| SecurityError::Io { what, path: shown.clone(), source })?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecurityError::Invalid {
            what,
            path: shown.clone(),
            reason: format!("group or others may read it (mode {mode:o}); fix it with `chmod 600 {shown}`"),
        });
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(SecurityError::Invalid {
            what,
            path: shown.clone(),
            reason: format!(
                "it belongs to uid {}, not to the agent's user (uid {me}); fix it with `chown {me} {shown}`",
                meta.uid()
            ),
        });
    }
    Ok(())
}

/// Returns the token in `path`, after creating the file with a new random token (mode 0600) if
/// it does not exist.
///
/// Whitespace around the token in the file is ignored.
///
/// # Errors
///
/// Returns an error when the file cannot be read or created (for example because its directory
/// does not exist), when it is not private to this user, or when the token is shorter than
/// [`MIN_TOKEN_LEN`].
pub fn load_or_create_token(path: &Path) -> Result<String, SecurityError> {
    const WHAT: &str = "auth token file";
    match fs::read_to_string(path) {
        Ok(text) => {
            check_private(WHAT, path)?;
            let token = text.trim().to_owned();
            if token.len() < MIN_TOKEN_LEN {
                return Err(SecurityError::Invalid {
                    what: WHAT,
                    path: path.display().to_string(),
                    reason: format!(
                        "the token has {} characters, fewer than {MIN_TOKEN_LEN} (delete the file: a new one is made at start)",
                        token.len()
                    ),
                });
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| SecurityError::Invalid {
                what: WHAT,
                path: path.display().to_string(),
                reason: format!("no randomness: {e}"),
            })?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            create_0600(WHAT, "auth_token_file_path", path, token.as_bytes())?;
            Ok(token)
        }
        Err(source) => Err(SecurityError::Io { what: WHAT, path: path.display().to_string(), source }),
    }
}

/// Reads the certificate and key in `path`, which must exist and be private to this user.
///
/// # Errors
///
/// Returns an error when the file cannot be read, when its group or other users have any
/// permission on it or another user owns it, or when it lacks a PEM certificate block or a PEM
/// key block. What the blocks hold is checked later, by the TLS setup.
pub fn load_cert(path: &Path) -> Result<IpcCert, SecurityError> {
    const WHAT: &str = "IPC certificate";
    let text = fs::read_to_string(path).map_err(|source| SecurityError::Io {
        what: WHAT,
        path: path.display().to_string(),
        source,
    })?;
    check_private(WHAT, path)?;
    IpcCert::from_pem(&text).map_err(|reason| SecurityError::Invalid {
        what: WHAT,
        path: path.display().to_string(),
        reason: reason.to_owned(),
    })
}

/// Returns the certificate and key in `path`, after creating the file with a new self-signed
/// certificate (see the module docs) if it does not exist.
///
/// # Errors
///
/// Returns the errors of [`load_cert`] for an existing file, and an error when a new
/// certificate cannot be made or written (for example because its directory does not exist).
pub fn load_or_create_cert(path: &Path) -> Result<IpcCert, SecurityError> {
    const WHAT: &str = "IPC certificate";
    let invalid = |reason: String| SecurityError::Invalid { what: WHAT, path: path.display().to_string(), reason };
    match fs::read_to_string(path) {
        Ok(text) => {
            check_private(WHAT, path)?;
            IpcCert::from_pem(&text).map_err(|reason| invalid(reason.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut params =
                rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()])
                    .map_err(|e| invalid(e.to_string()))?;
            params.distinguished_name.push(rcgen::DnType::OrganizationName, "wm-agent");
            params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
            params.extended_key_usages =
                vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let key =
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| invalid(e.to_string()))?;
            let cert = params.self_signed(&key).map_err(|e| invalid(e.to_string()))?;
            let pair = IpcCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
            create_0600(WHAT, "ipc_cert_file_path", path, format!("{}{}", pair.cert_pem, pair.key_pem).as_bytes())?;
            Ok(pair)
        }
        Err(source) => Err(SecurityError::Io { what: WHAT, path: path.display().to_string(), source }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("wm-sec-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_token_is_created_once_0600_and_then_reused() {
        let path = dir("token").join("auth_token");
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), token);
    }

    #[test]
    fn a_readable_short_or_foreign_token_is_refused_with_the_fix() {
        let path = dir("refused").join("auth_token");
        fs::write(&path, "x".repeat(40)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_token(&path).unwrap_err().to_string();
        assert!(e.contains("mode 644") && e.contains(&format!("chmod 600 {}", path.display())), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_or_create_token(&path).unwrap().len(), 40);
        fs::write(&path, "short").unwrap();
        let e = load_or_create_token(&path).unwrap_err().to_string();
        assert!(e.contains("fewer than 32"), "{e}");
        if rustix::process::geteuid().is_root() {
            fs::write(&path, "y".repeat(40)).unwrap();
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let e = load_or_create_token(&path).unwrap_err().to_string();
            assert!(e.contains("belongs to uid 65534") && e.contains("chown 0"), "{e}");
        }
    }

    #[test]
    fn a_symlink_at_the_path_is_replaced_never_followed() {
        let d = dir("symlink");
        let target = d.join("victim");
        fs::write(&target, "do not touch").unwrap();
        let path = d.join("auth_token");
        // A dangling link to a file that does not exist yet.
        std::os::unix::fs::symlink(d.join("elsewhere"), &path).unwrap();
        let token = load_or_create_token(&path).unwrap();
        assert!(!d.join("elsewhere").exists(), "the link was followed");
        assert!(!fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(&path).unwrap(), token);
        assert_eq!(fs::read_to_string(&target).unwrap(), "do not touch");
        let leftovers: Vec<_> =
            fs::read_dir(&d).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_missing_directory_is_named_with_the_key_that_moves_it() {
        let e = load_or_create_token(Path::new("/nonexistent-wm/dir/auth_token")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent-wm/dir does not exist") && e.contains("auth_token_file_path"), "{e}");
    }

    #[test]
    fn the_certificate_is_created_and_read_back() {
        let path = dir("cert").join("ipc_cert.pem");
        let created = load_or_create_cert(&path).unwrap();
        assert!(created.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(created.key_pem.contains("PRIVATE KEY"));
        let read = load_or_create_cert(&path).unwrap();
        assert_eq!((read.cert_pem, read.key_pem), (created.cert_pem, created.key_pem));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
