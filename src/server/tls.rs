//! rustls server configuration with a serving certificate that can be swapped
//! while connections are open.
//!
//! The certificate lives behind an `ArcSwap` read by a `ResolvesServerCert`
//! on every handshake, so a reload is one atomic pointer store: handshakes in
//! flight finish with the old pair, the next one gets the new pair, and
//! established connections are not touched. A new pair is only stored after
//! it parsed and its key matched its certificate, so a half-written or wrong
//! pair never replaces a working one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("certificate {cert} and key {key} do not form a usable pair: {source}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client CA {path}: {what}")]
    ClientCa { path: PathBuf, what: String },
}

/// The crypto provider: ring, on every TLS surface of the program, so the
/// build needs no C toolchain beyond what `ring` brings and no OpenSSL.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and key, checked to belong together.
pub struct LoadedPair {
    pub key: Arc<CertifiedKey>,
    /// `notAfter` of the leaf, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Parses a PEM chain and key (PKCS#8, PKCS#1 or SEC1) from bytes.
pub fn parse_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<LoadedPair, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_path.into(),
            what: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_path.into(),
        });
    };
    let not_after = not_after(leaf).ok_or_else(|| TlsError::Pem {
        path: cert_path.into(),
        what: "leaf certificate does not parse as X.509".into(),
    })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        path: key_path.into(),
        what: e.to_string(),
    })?;
    let pair_err = |source| TlsError::Pair {
        cert: cert_path.into(),
        key: key_path.into(),
        source,
    };
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(pair_err)?;
    // from_der lets "cannot tell" through; we want a definite match.
    certified.keys_match().map_err(pair_err)?;
    Ok(LoadedPair {
        key: Arc::new(certified),
        not_after,
    })
}

pub fn load_pair(cert_path: &Path, key_path: &Path) -> Result<LoadedPair, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.into(),
            source,
        })
    };
    parse_pair(&read(cert_path)?, &read(key_path)?, cert_path, key_path)
}

fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The serving certificate, swappable at run time.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(CertStore {
            current: ArcSwap::new(key),
        })
    }

    pub fn store(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// TLS 1.2 and 1.3, ALPN `http/1.1` alone (the one protocol the API server
/// speaks to webhooks), optional client certificates.
pub fn server_config(
    certs: Arc<CertStore>,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let ca_err = |what: String| TlsError::ClientCa {
                path: path.into(),
                what,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(cert.map_err(|e| ca_err(e.to_string()))?)
                    .map_err(|e| ca_err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_err("no certificate found".into()));
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| ca_err(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Stateless resumption tickets: a reconnecting client skips the full
    // handshake without the server keeping per-client state.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::certs;

    #[test]
    fn pair_loads_and_mismatch_is_rejected() {
        let a = certs::generate(&["localhost".into()]).unwrap();
        let b = certs::generate(&["localhost".into()]).unwrap();
        let p = Path::new("x");
        let pair = parse_pair(
            a.serving_cert_pem.as_bytes(),
            a.serving_key_pem.as_bytes(),
            p,
            p,
        )
        .unwrap();
        assert!(pair.not_after > 0);
        let err = parse_pair(
            a.serving_cert_pem.as_bytes(),
            b.serving_key_pem.as_bytes(),
            p,
            p,
        )
        .err()
        .unwrap();
        assert!(matches!(err, TlsError::Pair { .. }), "{err}");
        assert!(matches!(
            parse_pair(b"", a.serving_key_pem.as_bytes(), p, p),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(parse_pair(a.serving_cert_pem.as_bytes(), b"garbage", p, p).is_err());
    }

    #[test]
    fn server_config_with_and_without_client_ca() {
        let a = certs::generate(&["localhost".into()]).unwrap();
        let p = Path::new("x");
        let pair = parse_pair(
            a.serving_cert_pem.as_bytes(),
            a.serving_key_pem.as_bytes(),
            p,
            p,
        )
        .unwrap();
        let store = CertStore::new(pair.key);
        let cfg = server_config(store.clone(), None).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, &a.ca_cert_pem).unwrap();
        server_config(store.clone(), Some(&ca)).unwrap();
        std::fs::write(&ca, "nothing").unwrap();
        assert!(server_config(store, Some(&ca)).is_err());
    }
}
