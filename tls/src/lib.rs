//! TLS for Dash's links, with rustls and the ring provider (the easier one
//! to cross-build for ARM gateways).
//!
//! Configurations are built from PEM files named in the config, and every
//! error names the file and what to do. A client verifies the server
//! against a CA file or, without one, the system's roots, and presents a
//! certificate when it has one. A server may ask for client certificates
//! from one CA; [`fingerprint`] names a certificate for the registry of
//! agents.

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

pub use rustls;

/// What went wrong, naming the file or setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// ring, as rustls' crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (a chain: the leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| file_error(path, format!("holds no usable PRIVATE KEY block: {e}")))
}

fn roots_from(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The system's trusted roots (`/etc/ssl/certs` on Debian).
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::Config(format!(
            "no system CA certificates found ({} errors); set a CA file",
            found.errors.len()
        )));
    }
    Ok(roots)
}

/// Where a client finds its trust and its own identity.
#[derive(Debug, Clone, Default)]
pub struct ClientFiles<'a> {
    /// The CA that signed the server's certificate; `None`: the system roots.
    pub ca: Option<&'a Path>,
    /// This client's certificate chain and key, for mutual TLS.
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
}

/// A client configuration: verifies the server, presents a certificate when
/// both `cert` and `key` are given.
pub fn client_config(files: &ClientFiles<'_>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match files.ca {
        Some(ca) => roots_from(ca)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (files.cert, files.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| file_error(key, format!("does not match {}: {e}", cert.display())))?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError::Config(
                "a client certificate needs both its certificate and its key file".into(),
            ));
        }
    };
    Ok(Arc::new(config))
}

/// Who may connect to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Nobody is asked for a certificate.
    None,
    /// Clients may present one from the CA; others must prove themselves
    /// otherwise (a token).
    Optional,
    /// Every client must present a certificate from the CA.
    Required,
}

/// A server configuration from its certificate chain and key, checking
/// client certificates against `client_ca` as `auth` says. rustls checks
/// the chain, the validity period and the key usage.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (auth, client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(TlsError::Config(
                "client certificates need the CA that signs them".into(),
            ));
        }
        (auth, Some(ca)) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots_from(ca)?), provider());
            let verifier = match auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|e| file_error(ca, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| file_error(key, format!("does not match {}: {e}", cert.display())))?;
    Ok(Arc::new(config))
}

/// SHA-256 of a certificate's DER, lower-case hex: how the registry of
/// agents names a client certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    dash_runtime::secret::hex(&Sha256::digest(cert.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn configurations_build_from_generated_files_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = write(dir.path(), "cert.pem", &cert.pem());
        let key_path = write(dir.path(), "key.pem", &key.serialize_pem());
        server_config(
            &cert_path,
            &key_path,
            Some(&cert_path),
            ClientAuth::Required,
        )
        .unwrap();
        client_config(&ClientFiles {
            ca: Some(&cert_path),
            cert: Some(&cert_path),
            key: Some(&key_path),
        })
        .unwrap();
        assert_eq!(fingerprint(cert.der()).len(), 64);

        let garbage = write(dir.path(), "garbage.pem", "not pem at all");
        let err = load_certs(&garbage).unwrap_err().to_string();
        assert!(
            err.contains("garbage.pem") && err.contains("no CERTIFICATE"),
            "{err}"
        );
        let err = load_key(&cert_path).unwrap_err().to_string();
        assert!(err.contains("cert.pem"), "{err}");
        let err = server_config(&cert_path, &key_path, None, ClientAuth::Optional)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CA"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = client_config(&ClientFiles {
            ca: Some(&missing),
            ..ClientFiles::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
