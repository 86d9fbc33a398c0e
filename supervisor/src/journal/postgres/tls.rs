//! TLS to PostgreSQL: what each `sslmode` asks, and the rustls configuration that does it.
//!
//! Every mode that uses TLS verifies the server's certificate chain, against the
//! certificates of `sslrootcert` when the URL names a file, the system's bundle for
//! `sslrootcert=system`, and Mozilla's roots (webpki-roots) otherwise. Only `verify-full`
//! also checks that the certificate names the host. An operator whose server has a
//! private CA gives that CA's certificate as `sslrootcert`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Largest certificate file read (a system bundle is a few hundred KiB).
const MOST: u64 = 16 << 20;

/// Where the system's CA bundle may be, for `sslrootcert=system` (Debian and Ubuntu,
/// Fedora and RHEL, Alpine and others).
const SYSTEM_BUNDLES: [&str; 3] =
    ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// The URL's `sslmode` (libpq's names; `allow` is not offered: it is `prefer` backwards and
/// protects nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SslMode {
    /// Plain: never TLS.
    Disable,
    /// TLS when the server offers it (then verified as `Require`), plain when it does not.
    /// The default, as in libpq.
    Prefer,
    /// TLS, the chain verified; any host name.
    Require,
    /// As `Require` (kept apart for libpq's users: the same check).
    VerifyCa,
    /// TLS, the chain verified and the certificate naming the host.
    VerifyFull,
}

impl SslMode {
    /// The mode named `name`, or `None`.
    pub(super) fn from_name(name: &str) -> Option<SslMode> {
        Some(match name {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// An error in the TLS setup: the certificate file (when one is to blame) and the cause.
#[derive(Debug)]
pub(super) struct TlsSetupError {
    pub file: Option<PathBuf>,
    pub cause: String,
}

/// The rustls configuration for `mode` (not `Disable`) with the roots of `rootcert`
/// (`None`: Mozilla's; `system`: the system's bundle; else a PEM file).
///
/// # Errors
/// The certificate file cannot be read or holds no certificate.
pub(super) fn client_config(mode: SslMode, rootcert: Option<&str>) -> Result<ClientConfig, TlsSetupError> {
    let roots = Arc::new(roots(rootcert)?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let setup = |e: rustls::Error| TlsSetupError { file: None, cause: e.to_string() };
    let full = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsSetupError { file: None, cause: e.to_string() })?;
    let verifier: Arc<dyn ServerCertVerifier> =
        if mode == SslMode::VerifyFull { full } else { Arc::new(AnyHostName(full)) };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(setup)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // PostgreSQL 17 asks it of direct TLS connections; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// The trust anchors of `rootcert`.
fn roots(rootcert: Option<&str>) -> Result<RootCertStore, TlsSetupError> {
    let file = match rootcert {
        None => return Ok(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }),
        Some("system") => system_bundle().ok_or_else(|| TlsSetupError {
            file: None,
            cause: format!("sslrootcert=system: no CA bundle in {}", SYSTEM_BUNDLES.join(", ")),
        })?,
        Some(file) => PathBuf::from(file),
    };
    let fail = |cause: String| TlsSetupError { file: Some(file.clone()), cause };
    let mut pem = Vec::new();
    std::fs::File::open(&file).and_then(|f| f.take(MOST + 1).read_to_end(&mut pem)).map_err(|e| fail(e.to_string()))?;
    if pem.len() as u64 > MOST {
        return Err(fail(format!("is longer than {MOST} bytes")));
    }
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| fail(format!("is not a PEM certificate file: {e}")))?;
        store.add(cert).map_err(|e| fail(format!("holds a certificate that cannot be a root: {e}")))?;
    }
    if store.is_empty() {
        return Err(fail("holds no PEM certificate".to_string()));
    }
    Ok(store)
}

/// `$SSL_CERT_FILE`, else the first system bundle that exists.
fn system_bundle() -> Option<PathBuf> {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
        .find(|file| Path::new(file).is_file())
}

/// Verifies a server's certificate chain as the inner verifier does, but accepts any host
/// name: `require` and `verify-ca`. The inner verifier checks the name last, after the
/// chain, its validity dates and its usage, so a name error means everything else passed.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_libpq_mode_but_allow_is_known() {
        for (name, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(SslMode::from_name(name), Some(mode));
        }
        assert_eq!(SslMode::from_name("allow"), None);
        assert_eq!(SslMode::from_name("Require"), None);
    }

    #[test]
    fn a_root_file_without_certificates_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "not a certificate\n").unwrap();
        let err = client_config(SslMode::Require, file.to_str()).unwrap_err();
        assert_eq!(err.file.as_deref(), Some(file.as_path()));
        assert_eq!(err.cause, "holds no PEM certificate");
        let missing = dir.path().join("missing.pem");
        let err = client_config(SslMode::Require, missing.to_str()).unwrap_err();
        assert_eq!(err.file.as_deref(), Some(missing.as_path()));
    }

    #[test]
    fn without_a_root_file_mozillas_roots_are_trusted() {
        assert!(roots(None).unwrap().len() > 100);
    }
}
