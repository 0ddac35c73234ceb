//! Certificate authority and serving certificate generation (rcgen), for
//! `zonewise certs` and for the self-signed development default of `serve`.
//!
//! ECDSA P-256 keys: handshakes are several times cheaper than RSA-2048,
//! and every API server and Go TLS stack accepts them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// A fresh CA and a serving certificate it signed, PEM encoded.
pub struct Generated {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A new CA, valid for 10 years, and a serving certificate it signed for
/// `names` (DNS names or IP addresses), valid for 1 year.
pub fn generate(names: &[String]) -> Result<Generated, CertError> {
    let now = OffsetDateTime::now_utc();
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = dn("zonewise CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(3650);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let (serving_cert_pem, serving_key_pem) = leaf(names, &Issuer::new(ca, &ca_key))?;
    Ok(Generated {
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        serving_cert_pem,
        serving_key_pem,
    })
}

/// A new serving certificate for `names` from an existing CA, so renewing
/// it leaves the caBundle the API server trusts unchanged.
pub fn issue(
    names: &[String],
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Result<Generated, CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, &ca_key)?;
    let (serving_cert_pem, serving_key_pem) = leaf(names, &issuer)?;
    Ok(Generated {
        ca_cert_pem: ca_cert_pem.to_string(),
        ca_key_pem: ca_key_pem.to_string(),
        serving_cert_pem,
        serving_key_pem,
    })
}

fn leaf(names: &[String], issuer: &Issuer<'_, &KeyPair>) -> Result<(String, String), CertError> {
    let now = OffsetDateTime::now_utc();
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name = dn(names.first().map(String::as_str).unwrap_or("zonewise"));
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - Duration::hours(1);
    leaf.not_after = now + Duration::days(365);
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "zonewise");
    dn
}

/// Paths of the files written by [`write`].
#[derive(Debug, Clone)]
pub struct Written {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `ca.crt`, `ca.key`, `tls.crt`, `tls.key` (the names a
/// `kubernetes.io/tls` Secret uses) into `dir`; keys are readable by the
/// owner only.
pub fn write(dir: &Path, g: &Generated) -> Result<Written, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.into(),
        source,
    })?;
    let w = Written {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    write_file(&w.ca_cert, &g.ca_cert_pem, false)?;
    write_file(&w.ca_key, &g.ca_key_pem, true)?;
    write_file(&w.cert, &g.serving_cert_pem, false)?;
    write_file(&w.key, &g.serving_key_pem, true)?;
    Ok(w)
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.into(),
        source,
    };
    // Write to a temporary name and rename, so a reader (the TLS reloader)
    // never sees half a file.
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(contents.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// The development default: reuse `tls.crt`/`tls.key` in `dir` when they
/// load and stay valid for at least a day, else generate a new CA and a
/// certificate for `localhost`, `127.0.0.1` and `::1`. Returns the paths
/// and whether new files were written.
pub fn ensure_dev(dir: &Path) -> Result<(Written, bool), CertError> {
    let existing = Written {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    let soon = OffsetDateTime::now_utc().unix_timestamp() + 24 * 3600;
    if existing.ca_cert.exists()
        && crate::server::tls::load_pair(&existing.cert, &existing.key)
            .is_ok_and(|p| p.not_after > soon)
    {
        return Ok((existing, false));
    }
    let g = generate(&["localhost".into(), "127.0.0.1".into(), "::1".into()])?;
    Ok((write(dir, &g)?, true))
}

/// The names a serving certificate for `service` in `namespace` needs: the
/// API server dials `<service>.<namespace>.svc`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_chain_verifies_and_names_are_in_the_leaf() {
        let g = generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let w = write(dir.path(), &g).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&w.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "key must not be group/world readable");
        }
        let pem = std::fs::read(&w.cert).unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = p.parse_x509().unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        let text = format!("{:?}", sans.value.general_names);
        assert!(
            text.contains("localhost") && text.contains("[127, 0, 0, 1]"),
            "{text}"
        );
        let ca_pem = std::fs::read(&w.ca_cert).unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(&ca_pem).unwrap();
        let ca = ca.parse_x509().unwrap();
        cert.verify_signature(Some(ca.public_key())).unwrap();
        assert!(ca.is_ca());
    }

    #[test]
    fn issue_keeps_the_ca() {
        let first = generate(&["a.example".into()]).unwrap();
        let second = issue(&["a.example".into()], &first.ca_cert_pem, &first.ca_key_pem).unwrap();
        assert_eq!(second.ca_cert_pem, first.ca_cert_pem);
        assert_ne!(second.serving_cert_pem, first.serving_cert_pem);
        let (_, ca) = x509_parser::pem::parse_x509_pem(first.ca_cert_pem.as_bytes()).unwrap();
        let ca = ca.parse_x509().unwrap();
        let (_, leaf) =
            x509_parser::pem::parse_x509_pem(second.serving_cert_pem.as_bytes()).unwrap();
        leaf.parse_x509()
            .unwrap()
            .verify_signature(Some(ca.public_key()))
            .unwrap();
    }

    #[test]
    fn dev_certificate_is_reused_until_broken() {
        let dir = tempfile::tempdir().unwrap();
        let (w, generated) = ensure_dev(dir.path()).unwrap();
        assert!(generated);
        let first = std::fs::read(&w.cert).unwrap();
        let (_, generated) = ensure_dev(dir.path()).unwrap();
        assert!(!generated);
        assert_eq!(std::fs::read(&w.cert).unwrap(), first);
        std::fs::write(&w.key, "broken").unwrap();
        let (_, generated) = ensure_dev(dir.path()).unwrap();
        assert!(generated);
        assert_ne!(std::fs::read(&w.cert).unwrap(), first);
    }
}
