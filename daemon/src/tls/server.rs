//! Serving an identity: the hot-swappable certificate resolver, the rustls configuration
//! (client certificates and CRLs included) and loading certificate, key and CRL files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use time::OffsetDateTime;

use crate::config::TlsConfig;
use crate::util::{read, write};

use super::*;

/// Where the served certificate comes from.
#[derive(Clone, Debug)]
pub(super) enum Source {
    /// `tls.cert` / `tls.key` from the config: read as they are, never modified.
    Configured { cert: PathBuf, key: PathBuf },
    /// The local CA and server certificate under `<state_dir>/tls`.
    Generated { dir: PathBuf },
}

/// The live TLS identity of the server: the rustls config (built once) and the certificate
/// it presents (swapped on [`TlsServer::reload`]).
pub struct TlsServer {
    source: Source,
    resolver: Arc<SwapResolver>,
    identity: RwLock<Identity>,
    /// Rebuilt on reload when client certificates are required (the verifier holds the CA
    /// bundle and revocation lists); new handshakes take the current one.
    config: RwLock<Arc<ServerConfig>>,
    client_auth: Option<ClientAuth>,
}

/// `tls.client_ca` and `tls.client_crl`, re-read on every reload.
#[derive(Clone, Debug)]
pub(super) struct ClientAuth {
    ca: PathBuf,
    crl: Option<PathBuf>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Source {
    pub(super) fn of(cfg: &TlsConfig, state_dir: &Path) -> Result<Source, TlsError> {
        match (&cfg.cert, &cfg.key) {
            (Some(cert), Some(key)) => Ok(Source::Configured {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => Ok(Source::Generated {
                dir: state_dir.join("tls"),
            }),
            _ => Err(TlsError::Config(
                "`tls.cert` and `tls.key` must be set together".into(),
            )),
        }
    }
}

/// `<state_dir>/tls` holds an imported certificate (see [`IMPORTED_MARKER`]).
pub(super) fn is_imported(dir: &Path) -> bool {
    dir.join(IMPORTED_MARKER).exists()
}

impl TlsServer {
    /// Load the configured certificate, or create / renew the local identity in
    /// `<state_dir>/tls`. Fails with the file named.
    pub fn new(cfg: &TlsConfig, state_dir: &Path) -> Result<TlsServer, TlsError> {
        let source = Source::of(cfg, state_dir)?;
        let (key, identity) = load(&source, OffsetDateTime::now_utc())?;
        let resolver = Arc::new(SwapResolver {
            current: RwLock::new(Arc::new(key)),
        });
        let client_auth = match (&cfg.client_ca, &cfg.client_crl) {
            (Some(ca), crl) => Some(ClientAuth {
                ca: ca.clone(),
                crl: crl.clone(),
            }),
            (None, Some(_)) => {
                return Err(TlsError::Config(
                    "`tls.client_crl` needs `tls.client_ca`".into(),
                ))
            }
            (None, None) => None,
        };
        let config = server_config(resolver.clone(), client_auth.as_ref())?;
        Ok(TlsServer {
            source,
            resolver,
            identity: RwLock::new(identity),
            config: RwLock::new(config),
            client_auth,
        })
    }

    /// The rustls config for the acceptor (TLS 1.3 + 1.2, ALPN h2 and http/1.1).
    pub fn config(&self) -> Arc<ServerConfig> {
        read(&self.config).clone()
    }

    pub fn identity(&self) -> Identity {
        read(&self.identity).clone()
    }

    /// Re-read (and for the generated identity, renew if due) the certificate, and the
    /// client CA bundle and revocation lists, and swap them in. Connections already
    /// established keep their session; new handshakes get the new files. On error nothing
    /// changes.
    pub fn reload(&self) -> Result<Identity, TlsError> {
        self.reload_at(OffsetDateTime::now_utc())
    }

    fn reload_at(&self, now: OffsetDateTime) -> Result<Identity, TlsError> {
        let (key, identity) = load(&self.source, now)?;
        // Built (and so validated) before anything is swapped.
        let config = match &self.client_auth {
            Some(auth) => Some(server_config(self.resolver.clone(), Some(auth))?),
            None => None,
        };
        *write(&self.resolver.current) = Arc::new(key);
        *write(&self.identity) = identity.clone();
        if let Some(config) = config {
            *write(&self.config) = config;
        }
        Ok(identity)
    }

    /// Renew the generated server certificate if it has entered its renewal window (fewer
    /// than [`RENEW_BEFORE_DAYS`] left) and serve the new one: `Some` when renewed. A
    /// configured or imported certificate is never renewed here.
    pub fn renew_if_due(&self) -> Result<Option<Identity>, TlsError> {
        self.renew_if_due_at(OffsetDateTime::now_utc())
    }

    pub(super) fn renew_if_due_at(
        &self,
        now: OffsetDateTime,
    ) -> Result<Option<Identity>, TlsError> {
        let current = self.identity();
        let due = current.kind == IdentityKind::Generated
            && current.not_after
                <= (now + time::Duration::days(RENEW_BEFORE_DAYS)).unix_timestamp();
        if !due {
            return Ok(None);
        }
        self.reload_at(now).map(Some)
    }

    /// Replace the generated server certificate now, keeping the CA, and serve it.
    pub fn rotate(&self) -> Result<Identity, TlsError> {
        manage::rotate_source(&self.source, OffsetDateTime::now_utc(), &local_names())?;
        self.reload()
    }
}

/// Serves whatever certificate is current; `reload` swaps it under a short write lock.
#[derive(Debug)]
pub(super) struct SwapResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SwapResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(read(&self.current).clone())
    }
}

pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(super) fn server_config(
    resolver: Arc<SwapResolver>,
    client_auth: Option<&ClientAuth>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    // TLS 1.0 and 1.1 are not implemented by rustls at all; listing 1.3 and 1.2 here makes
    // the policy explicit.
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_auth {
        Some(ClientAuth { ca: path, crl }) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| invalid(path, e))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crl_path) = crl {
                // Only the client's own certificate is checked: the CRL file holds the lists
                // of the CAs that issue client certificates, and a certificate of a CA
                // without a list there is refused (its status is unknown).
                verifier = verifier
                    .with_crls(read_crls(crl_path)?)
                    .only_check_end_entity_revocation();
            }
            let verifier = verifier
                .build()
                .map_err(|e| invalid(crl.as_deref().unwrap_or(path.as_path()), e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

pub(super) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no certificate in the file"));
    }
    Ok(certs)
}

pub(super) fn read_crls(
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not a PEM CRL file: {e}")))?;
    if crls.is_empty() {
        return Err(invalid(
            path,
            "no certificate revocation list (X509 CRL) in the file",
        ));
    }
    Ok(crls)
}

pub(super) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| invalid(path, format!("not a PEM private key: {e}")))
}

/// Read (and for the generated identity, create or renew) the certificate of `source`.
pub(super) fn load(
    source: &Source,
    now: OffsetDateTime,
) -> Result<(CertifiedKey, Identity), TlsError> {
    let (cert_path, key_path, ca_path, kind) = match source {
        Source::Configured { cert, key } => {
            (cert.clone(), key.clone(), None, IdentityKind::Configured)
        }
        Source::Generated { dir } if is_imported(dir) => (
            dir.join("server.pem"),
            dir.join("server.key"),
            None,
            IdentityKind::Imported,
        ),
        Source::Generated { dir } => {
            ensure_generated(dir, now, &local_names())?;
            (
                dir.join("server.pem"),
                dir.join("server.key"),
                Some(dir.join("ca.pem")),
                IdentityKind::Generated,
            )
        }
    };
    let chain = read_certs(&cert_path)?;
    let key = read_key(&key_path)?;
    let leaf = chain
        .first()
        .ok_or_else(|| invalid(&cert_path, "no certificate in the file"))?;
    let not_after = cert_not_after(leaf)
        .ok_or_else(|| invalid(&cert_path, "cannot read the certificate's validity"))?;
    if not_after < now.unix_timestamp() {
        tracing::warn!(
            cert = %cert_path.display(),
            not_after = %utc_string(not_after),
            "the served TLS certificate has expired; clients will refuse it"
        );
    }
    let identity = Identity {
        fingerprint: fingerprint(leaf),
        not_after,
        ca_path,
        cert_path: cert_path.clone(),
        kind,
    };
    let certified = certified_key(chain, key).map_err(|e| {
        invalid(
            &key_path,
            format!("does not match {}: {e}", cert_path.display()),
        )
    })?;
    Ok((certified, identity))
}
