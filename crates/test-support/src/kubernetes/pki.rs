//! The cluster's certificates and keys, made by our tooling: one CA signs every serving and
//! client certificate; the service-account signing key is a key pair of its own.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::runtimes::Unavailable;

fn failed(what: &str) -> impl Fn(rcgen::Error) -> Unavailable + '_ {
    move |e| Unavailable(format!("certificate {what}: {e}"))
}

/// Where a certificate and its key were written.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The PEM certificate.
    pub cert: PathBuf,
    /// The PEM (PKCS#8) key.
    pub key: PathBuf,
}

/// The CA, and what it signs.
pub(crate) struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate.
    pub(crate) ca: PathBuf,
}

impl Pki {
    /// A new CA in `dir`.
    pub(crate) fn new(dir: &Path) -> Result<Self, Unavailable> {
        fs::create_dir_all(dir).map_err(|e| Unavailable(format!("{}: {e}", dir.display())))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed("ca"))?;
        params.distinguished_name.push(DnType::CommonName, "wm-test-kubernetes-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(failed("ca key"))?;
        let cert = params.self_signed(&key).map_err(failed("ca"))?;
        let ca = dir.join("ca.crt");
        write(&ca, &cert.pem())?;
        write(&dir.join("ca.key"), &key.serialize_pem())?;
        Ok(Self { dir: dir.to_path_buf(), issuer: Issuer::new(params, key), ca })
    }

    /// A certificate for `common_name` in `organizations`, valid for the DNS names and IPs in
    /// `names` (as server) and/or as a client, written as `<file>.crt` and `<file>.key`.
    pub(crate) fn issue(
        &self,
        file: &str,
        common_name: &str,
        organizations: &[&str],
        names: &[&str],
        server: bool,
        client: bool,
    ) -> Result<CertFiles, Unavailable> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).map_err(failed(file))?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        for org in organizations {
            params.distinguished_name.push(DnType::OrganizationName, *org);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if server {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if client {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        let key = KeyPair::generate().map_err(failed(file))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(failed(file))?;
        let files = CertFiles { cert: self.dir.join(format!("{file}.crt")), key: self.dir.join(format!("{file}.key")) };
        write(&files.cert, &cert.pem())?;
        write(&files.key, &key.serialize_pem())?;
        Ok(files)
    }

    /// A key pair of its own (the service-account token signing key): the private key as
    /// `<file>.key` and the public key as `<file>.pub`, PEM (the API server verifies with the
    /// public one; it does not derive it from a PKCS#8 EC key).
    pub(crate) fn key_pair(&self, file: &str) -> Result<CertFiles, Unavailable> {
        let key = KeyPair::generate().map_err(failed(file))?;
        let files = CertFiles { cert: self.dir.join(format!("{file}.pub")), key: self.dir.join(format!("{file}.key")) };
        write(&files.key, &key.serialize_pem())?;
        write(&files.cert, &key.public_key_pem())?;
        Ok(files)
    }
}

fn write(path: &Path, text: &str) -> Result<(), Unavailable> {
    fs::write(path, text).map_err(|e| Unavailable(format!("{}: {e}", path.display())))
}
