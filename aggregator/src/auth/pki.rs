//! The aggregator's certificate authority, in one directory:
//!
//! - `ca.pem`, `ca.key`: the CA (ECDSA P-256, 10 years). The key never
//!   leaves this directory (mode 0700, key files 0600).
//! - `server.pem`, `server.key`: the broker's certificate, for the host
//!   names and addresses agents connect to.
//! - `aggregator.pem`, `aggregator.key`: a client certificate (CN
//!   `dash-aggregator`) for an external broker such as Mosquitto.
//! - `crl.pem`: the revocation list, rewritten by `agent revoke`, for an
//!   external broker (`crlfile` in Mosquitto). The embedded broker's front
//!   checks the registry instead.
//!
//! Agent certificates carry `CN = tenant/agent` and `O = tenant`; the
//! registry knows each by the SHA-256 of its DER.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;

/// The CN of the aggregator's own client certificate.
pub const AGGREGATOR_CN: &str = "dash-aggregator";

/// The files of a CA directory.
#[derive(Debug, Clone)]
pub struct CaDir {
    pub dir: PathBuf,
}

impl CaDir {
    pub fn new(dir: impl Into<PathBuf>) -> CaDir {
        CaDir { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn aggregator_cert(&self) -> PathBuf {
        self.dir.join("aggregator.pem")
    }
    pub fn aggregator_key(&self) -> PathBuf {
        self.dir.join("aggregator.key")
    }
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    fn issuer(&self) -> anyhow::Result<Issuer<'static, KeyPair>> {
        let key = read(&self.ca_key())?;
        let cert = read(&self.ca_cert())?;
        let key = KeyPair::from_pem(&key)
            .with_context(|| format!("{}: not a private key", self.ca_key().display()))?;
        Issuer::from_ca_cert_pem(&cert, key)
            .with_context(|| format!("{}: not a CA certificate", self.ca_cert().display()))
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (run `dash-aggregator ca init` first, or pass --ca-dir)",
            path.display()
        )
    })
}

/// Writes `text` to a new file with `mode`; never overwrites.
fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn to_chrono(t: OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.unix_timestamp(), 0).expect("certificate dates are in range")
}

fn to_time(t: DateTime<Utc>) -> anyhow::Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t.timestamp()).context("date out of range")
}

/// 16 random bytes, the top bit clear (a positive serial number).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

/// Creates a CA with the broker's server certificate (for `hosts`: names
/// and IP addresses) and the aggregator's client certificate. Refuses to
/// touch a directory that already holds a CA.
pub fn init(ca: &CaDir, hosts: &[String]) -> anyhow::Result<()> {
    if ca.ca_key().exists() {
        bail!(
            "{} already holds a CA; agents' certificates depend on it, so it is never replaced",
            ca.dir.display()
        );
    }
    if hosts.is_empty() {
        bail!("name at least one --host that agents connect to");
    }
    let mut server = CertificateParams::new(hosts.to_vec())
        .context("a --host is neither a DNS name nor an IP address")?;
    if !ca.dir.exists() {
        std::fs::create_dir_all(&ca.dir)
            .with_context(|| format!("cannot create {}", ca.dir.display()))?;
        std::fs::set_permissions(&ca.dir, std::fs::Permissions::from_mode(0o700))?;
    }

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    // A name of its own, so two CAs are never confused by name.
    let ca_name = format!(
        "Dash CA {}",
        dash_runtime::secret::hex(&rand::random::<[u8; 4]>())
    );
    params.distinguished_name.push(DnType::CommonName, ca_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Dash");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now() - time::Duration::hours(1);
    params.not_after = now() + time::Duration::days(3650);
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    write_new(&ca.ca_key(), &key.serialize_pem(), 0o600)?;
    write_new(&ca.ca_cert(), &cert.pem(), 0o644)?;
    let issuer = Issuer::new(params, key);

    server
        .distinguished_name
        .push(DnType::CommonName, hosts[0].as_str());
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.not_before = now() - time::Duration::hours(1);
    server.not_after = now() + time::Duration::days(825);
    server.serial_number = Some(random_serial());
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &issuer)?;
    write_new(&ca.server_key(), &server_key.serialize_pem(), 0o600)?;
    write_new(&ca.server_cert(), &server_cert.pem(), 0o644)?;

    let own = client_params(AGGREGATOR_CN, None, now() + time::Duration::days(825));
    let own_key = KeyPair::generate()?;
    let own_cert = own.signed_by(&own_key, &issuer)?;
    write_new(&ca.aggregator_key(), &own_key.serialize_pem(), 0o600)?;
    write_new(&ca.aggregator_cert(), &own_cert.pem(), 0o644)?;
    write_crl(ca, &[])?;
    Ok(())
}

fn client_params(cn: &str, org: Option<&str>, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    if let Some(org) = org {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before =
        (now() - time::Duration::hours(1)).min(not_after - time::Duration::hours(1));
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    params
}

/// An agent's new certificate and key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of the DER, hex (the registry's name for it).
    pub fingerprint: String,
    /// Serial number, hex (for the revocation list).
    pub serial: String,
    pub not_after: DateTime<Utc>,
}

/// Issues a client certificate for `tenant/agent`, valid until `not_after`.
pub fn issue_agent(
    ca: &CaDir,
    tenant: &str,
    agent: &str,
    not_after: DateTime<Utc>,
) -> anyhow::Result<Issued> {
    let issuer = ca.issuer()?;
    let not_after = to_time(not_after)?;
    let params = client_params(&format!("{tenant}/{agent}"), Some(tenant), not_after);
    let serial =
        dash_runtime::secret::hex(params.serial_number.as_ref().expect("serial set").as_ref());
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        fingerprint: dash_tls::fingerprint(cert.der()),
        serial,
        not_after: to_chrono(not_after),
    })
}

/// Rewrites `crl.pem` with the revoked serial numbers (hex), valid for 30
/// days (rewrite it, for example with `agent revoke` or `ca crl`, before then).
pub fn write_crl(ca: &CaDir, revoked: &[(String, DateTime<Utc>)]) -> anyhow::Result<PathBuf> {
    let issuer = ca.issuer()?;
    let mut revoked_certs = Vec::with_capacity(revoked.len());
    for (serial, at) in revoked {
        let bytes = (0..serial.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(serial.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .with_context(|| format!("serial {serial:?} in the registry is not hex"))?;
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from(bytes),
            revocation_time: to_time(*at)?,
            reason_code: Some(RevocationReason::CessationOfOperation),
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: now() - time::Duration::minutes(5),
        next_update: now() + time::Duration::days(30),
        crl_number: SerialNumber::from(now().unix_timestamp().to_be_bytes().to_vec()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    let path = ca.crl();
    let tmp = ca.dir.join(format!("crl.pem.{}.tmp", std::process::id()));
    std::fs::write(&tmp, crl.pem()?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_agent_certificates_rustls_accepts_and_never_overwrites_itself() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path().join("ca"));
        init(&ca, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let err = init(&ca, &["localhost".into()]).unwrap_err().to_string();
        assert!(err.contains("already holds a CA"), "{err}");
        let issued =
            issue_agent(&ca, "acme", "gw-1", Utc::now() + chrono::Duration::days(30)).unwrap();
        assert_eq!(issued.fingerprint.len(), 64);
        let cert = dir.path().join("agent.pem");
        let key = dir.path().join("agent.key");
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        // Both sides build their TLS configurations from these files.
        dash_tls::server_config(
            &ca.server_cert(),
            &ca.server_key(),
            Some(&ca.ca_cert()),
            dash_tls::ClientAuth::Required,
        )
        .unwrap();
        dash_tls::client_config(&dash_tls::ClientFiles {
            ca: Some(&ca.ca_cert()),
            cert: Some(&cert),
            key: Some(&key),
        })
        .unwrap();
        let mode = std::fs::metadata(ca.ca_key()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        write_crl(&ca, &[(issued.serial.clone(), Utc::now())]).unwrap();
        assert!(
            std::fs::read_to_string(ca.crl())
                .unwrap()
                .contains("BEGIN X509 CRL")
        );
    }
}
