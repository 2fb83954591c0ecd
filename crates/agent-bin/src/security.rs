//! The IPC auth token and TLS certificate, created at first start as the Datadog Agent does.
//!
//! - Token: `auth_token_file_path` (default `auth_token` beside the config file): 64 random hex
//!   characters, created mode 0600; clients send `authorization: Bearer <token>`. A token shorter
//!   than 32 characters is refused.
//! - Both files are refused, with the command that fixes it, when group or others may read them
//!   or when another user owns them. New files are written atomically (a temporary file made
//!   with `O_EXCL`, then renamed over the path): a symlink at the path is replaced, never followed.
//! - Certificate: `ipc_cert_file_path` (default `ipc_cert.pem` beside the token): one PEM
//!   `CERTIFICATE` and one `PRIVATE KEY`, ECDSA P-256, self-signed, for `localhost`,
//!   `127.0.0.1` and `::1`, server and client auth, mode 0600. Unlike Datadog's it is not marked
//!   as a CA: rustls refuses a CA certificate as a server's own, and a self-signed leaf is
//!   trusted the same way by Go, BoringSSL (grpcio) and rustls clients that pin it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use wm_ipc::IpcCert;

/// Why a request's `authorization` value was refused (see [`check_bearer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerRefused {
    /// No `authorization` value, or not of the `Bearer` scheme.
    NotBearer,
    /// A bearer token, but not the agent's.
    WrongToken,
}

/// Checks an `authorization` value (HTTP header or gRPC metadata) against `token`: the scheme
/// `Bearer` in any case, then the token, compared in constant time so that the time taken says
/// nothing of how much of it was right.
///
/// # Errors
///
/// [`BearerRefused`] says whether the value was missing or of another scheme, or carried a
/// wrong token; the gRPC API answers each with Datadog's message.
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

/// Why the token or certificate cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The directory to create the file in does not exist.
    #[error("{what} {path}: its directory {dir} does not exist (create it, or set {key})")]
    MissingDirectory {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: String,
        /// Its directory.
        dir: String,
        /// The config key that moves it.
        key: &'static str,
    },
    /// Reading or writing failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds something unusable.
    #[error("{what} {path}: {reason}")]
    Invalid {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 32;

/// Writes `content` to `path` mode 0600, atomically: a fresh temporary file beside it (`O_EXCL`:
/// never an existing file or a symlink), synced, then renamed over `path`.
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

/// Refuses a secret file others may read or another user owns, saying how to fix it.
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

/// The token in `path`, created (0600, random) when the file does not exist.
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

/// The certificate in `path`, which must exist and be private to this user.
///
/// # Errors
///
/// The file cannot be read, others may read it, or it holds no certificate and key.
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

/// The certificate in `path`, created when the file does not exist.
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
