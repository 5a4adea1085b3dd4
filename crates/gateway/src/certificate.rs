//! The certificate the gateway serves when it terminates TLS (on 443, and on
//! 8000-8999 when a connection opens with a TLS handshake).
//!
//! Design decision: one certificate for every hostname, a wildcard for
//! `*.<domain>`: either the operator's PEM files, or a self-signed one
//! generated at first start and kept on disk (`wildcard.<domain>.cert.pem`
//! and `.key.pem`, the key readable by its owner only) so that a client told
//! to trust it keeps working across restarts. A self-signed certificate is
//! valid 825 days (the most Apple platforms accept) and is replaced at a
//! start once it is more than 790 days old.

use crate::config::CertificateSource;
use crate::hostname::Domain;
use chrono::Datelike;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const VALID_DAYS: i64 = 825;
const RENEW_AFTER: Duration = Duration::from_secs(790 * 24 * 3600);

/// Why the gateway has no certificate to serve.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no usable PEM {what}", path.display())]
    Pem {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{} exists but its private key {} does not; remove the certificate to have a new one generated",
        certificate.display(),
        private_key.display()
    )]
    KeyMissing {
        certificate: PathBuf,
        private_key: PathBuf,
    },
    #[error("cannot generate a self-signed certificate")]
    Generate(#[source] rcgen::Error),
    #[error("the certificate and key cannot serve TLS")]
    Tls(#[source] rustls::Error),
}

/// The certificate in use: the TLS configuration built from it, and its PEM
/// text for clients that need to trust it.
pub(crate) struct ServedCertificate {
    pub(crate) tls: Arc<rustls::ServerConfig>,
    pub(crate) pem: String,
}

/// Reads the operator's certificate, or reads (generating it first if
/// needed) the self-signed one. Blocking file I/O: called once, at start.
pub(crate) fn load(
    source: &CertificateSource,
    domain: &Domain,
) -> Result<ServedCertificate, CertificateError> {
    let (certificate, private_key) = match source {
        CertificateSource::Files {
            certificate,
            private_key,
        } => (certificate.clone(), private_key.clone()),
        CertificateSource::SelfSigned { dir } => self_signed(dir, domain)?,
    };
    let pem_bytes = read(&certificate)?;
    let chain = CertificateDer::pem_slice_iter(&pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertificateError::Pem {
            path: certificate.clone(),
            what: "certificate",
            source,
        })?;
    if chain.is_empty() {
        return Err(CertificateError::NoCertificate { path: certificate });
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&private_key)?).map_err(|source| {
        CertificateError::Pem {
            path: private_key.clone(),
            what: "private key",
            source,
        }
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CertificateError::Tls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(CertificateError::Tls)?;
    // The gateway speaks HTTP/1.1 only; saying so lets HTTP/2 clients fall back.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServedCertificate {
        tls: Arc::new(tls),
        pem: String::from_utf8_lossy(&pem_bytes).into_owned(),
    })
}

/// The paths of the self-signed certificate and key for `domain` in `dir`,
/// generated when missing or old.
fn self_signed(dir: &Path, domain: &Domain) -> Result<(PathBuf, PathBuf), CertificateError> {
    let certificate = dir.join(format!("wildcard.{domain}.cert.pem"));
    let private_key = dir.join(format!("wildcard.{domain}.key.pem"));
    let age = std::fs::metadata(&certificate)
        .and_then(|m| m.modified())
        .ok()
        .map(|modified| {
            SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default()
        });
    let key_exists = private_key.exists();
    match age {
        Some(age) if age < RENEW_AFTER && key_exists => return Ok((certificate, private_key)),
        Some(_) if !key_exists => {
            return Err(CertificateError::KeyMissing {
                certificate,
                private_key,
            });
        }
        Some(_) => tracing::info!(
            path = %certificate.display(),
            "the self-signed gateway certificate is near its end; generating a new one"
        ),
        // A key without a certificate is an interrupted first generation:
        // no client can have seen it, so start again.
        None => tracing::info!(
            path = %certificate.display(),
            domain = %domain,
            "generating a self-signed wildcard certificate for the gateway"
        ),
    }
    let (cert_pem, key_pem) = generate(domain).map_err(CertificateError::Generate)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CertificateError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    // The key first: a certificate on disk always has its key beside it.
    write_atomically(&private_key, key_pem.as_bytes(), 0o600)?;
    write_atomically(&certificate, cert_pem.as_bytes(), 0o644)?;
    Ok((certificate, private_key))
}

/// A self-signed ECDSA P-256 certificate for `*.<domain>` and `<domain>`:
/// (certificate PEM, private key PEM).
fn generate(domain: &Domain) -> Result<(String, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params =
        rcgen::CertificateParams::new(vec![format!("*.{domain}"), domain.to_string()])?;
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, format!("*.{domain}"));
    name.push(
        rcgen::DnType::OrganizationName,
        "Tessera gateway (self-signed)",
    );
    params.distinguished_name = name;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = chrono::Utc::now();
    let (year, month, day) = ymd(now - chrono::Duration::days(1));
    params.not_before = rcgen::date_time_ymd(year, month, day);
    let (year, month, day) = ymd(now + chrono::Duration::days(VALID_DAYS));
    params.not_after = rcgen::date_time_ymd(year, month, day);
    let certificate = params.self_signed(&key)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

fn ymd(at: chrono::DateTime<chrono::Utc>) -> (i32, u8, u8) {
    // Months and days always fit in a u8; the fallbacks are unreachable.
    let month = u8::try_from(at.month()).unwrap_or(1);
    let day = u8::try_from(at.day()).unwrap_or(1);
    (at.year(), month, day)
}

fn read(path: &Path) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(path).map_err(|source| CertificateError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to a temporary file beside `path` with `mode`, then
/// renames it over `path`, so a crash never leaves half a file.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertificateError> {
    let failed = |source| CertificateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let temporary = path.with_extension("pem.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)
}
