//! The TLS configuration of every outbound HTTPS client (web search, page fetches, MCP
//! servers): rustls with the ring provider (the daemon's; no aws-lc) and the system's trust
//! store through the platform verifier.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// The client configuration. The platform verifier fails when the system has no CA
/// certificates (a minimal image without ca-certificates); plain http:// upstreams must still
/// work then, so https ones fail at their handshake with the reason instead of the whole
/// client failing to build.
pub fn client_config() -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> =
        match rustls_platform_verifier::Verifier::new(provider.clone()) {
            Ok(v) => Arc::new(v),
            Err(e) => Arc::new(NoRoots {
                why: e.to_string(),
                schemes: provider
                    .signature_verification_algorithms
                    .supported_schemes(),
            }),
        };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// A client configuration trusting only the certificates of the PEM bundle `ca` (a company's
/// own CA, for one server, without trusting it for the rest of the system or the system's
/// roots for that server). The error says what is wrong with the file.
pub fn client_config_with_roots(ca: &std::path::Path) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The certificate verifier when the system's trust store could not be loaded: it refuses
/// every certificate, saying why.
#[derive(Debug)]
struct NoRoots {
    why: String,
    schemes: Vec<rustls::SignatureScheme>,
}

impl ServerCertVerifier for NoRoots {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(format!(
            "cannot verify the server's certificate: {}",
            self.why
        )))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(self.why.clone()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(self.why.clone()))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_system_roots_every_certificate_is_refused_with_the_reason() {
        let v = NoRoots {
            why: "No CA certificates were loaded from the system".into(),
            schemes: vec![],
        };
        let cert = CertificateDer::from(vec![0u8; 4]);
        let name = ServerName::try_from("mcp.lan").unwrap();
        let e = v
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("No CA certificates were loaded from the system"),
            "{e}"
        );
    }
}
