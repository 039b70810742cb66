//! TLS identity: loading a configured certificate or creating (and renewing) a local CA and a
//! server certificate signed by it, the fingerprint shown to admins, and a hot-swappable
//! certificate resolver so SIGHUP reloads certificates without dropping connections.
//!
//! Layout of the generated identity under `<state_dir>/tls/` (directory mode 0700):
//! `ca.pem` / `ca.key` (10 years; clients trust `ca.pem`), `server.pem` / `server.key`
//! (ECDSA P-256, 1 year, renewed at start or reload when fewer than 30 days are left). Keys
//! are written with mode 0600 before any byte of them is.
//!
//! Python ≥ 3.13 verifies with `VERIFY_X509_STRICT`: the CA must carry keyUsage
//! (keyCertSign, cRLSign) and a critical basicConstraints, and the leaf an
//! authorityKeyIdentifier. Both are set here and checked by the end-to-end tests with the
//! OpenAI SDK.
//!
//! `edgeseek tls show | rotate | import` work on the files directly ([`manage`]); an imported
//! certificate is marked by `<state_dir>/tls/imported` and never renewed from the local CA.

pub mod manage;

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::config::TlsConfig;

/// Common name of the generated CA. Renewal re-creates the issuer from this name and the
/// stored CA key (the signature only depends on those), so it must never change.
const CA_COMMON_NAME: &str = "edgeseek local CA";
const CA_VALID_DAYS: i64 = 3650;
const SERVER_VALID_DAYS: i64 = 365;
/// A generated server certificate with less than this left is replaced at start or reload.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// Marker file in `<state_dir>/tls/`: `server.pem` / `server.key` were imported
/// (`edgeseek tls import`), so they are served as they are and never renewed from the local CA.
pub const IMPORTED_MARKER: &str = "imported";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
    #[error("cannot generate the TLS identity: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error(
        "no TLS identity in {} yet; `edgeseek tls init` creates it (so does the first `edgeseek serve`)",
        dir.display()
    )]
    Missing { dir: PathBuf },
    /// The operation does not apply to this identity (one line, says why and what to do).
    #[error("{0}")]
    Refused(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, msg: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

fn gen_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// Where the served certificate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityKind {
    /// Issued by the local CA in `<state_dir>/tls` (renewed automatically, `tls rotate`).
    Generated,
    /// Copied into `<state_dir>/tls` by `edgeseek tls import` (never renewed by edgeseek).
    Imported,
    /// `tls.cert` / `tls.key` from the config, read where they are.
    Configured,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Generated => "generated",
            IdentityKind::Imported => "imported",
            IdentityKind::Configured => "configured",
        }
    }
}

/// What admins see about the served certificate (`edgeseek status`, startup log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// SHA-256 of the server certificate's DER, upper-case hex pairs joined by `:`.
    pub fingerprint: String,
    /// Expiry of the server certificate, seconds since the Unix epoch (UTC).
    pub not_after: i64,
    /// The CA clients should trust; `None` for a configured (externally issued) certificate.
    pub ca_path: Option<PathBuf>,
    /// The served certificate file.
    pub cert_path: PathBuf,
    pub kind: IdentityKind,
}

impl Identity {
    /// `not_after` as `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn not_after_utc(&self) -> String {
        utc_string(self.not_after)
    }
}

/// Formats Unix seconds as an RFC 3339 UTC timestamp.
pub fn utc_string(unix: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => unix.to_string(),
    }
}

/// SHA-256 fingerprint in the `AA:BB:…` form browsers and `openssl x509 -fingerprint` show.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// Where the served certificate comes from.
#[derive(Clone, Debug)]
enum Source {
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
struct ClientAuth {
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
    fn of(cfg: &TlsConfig, state_dir: &Path) -> Result<Source, TlsError> {
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
fn is_imported(dir: &Path) -> bool {
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
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn identity(&self) -> Identity {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = identity.clone();
        if let Some(config) = config {
            *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        }
        Ok(identity)
    }

    /// Renew the generated server certificate if it has entered its renewal window (fewer
    /// than [`RENEW_BEFORE_DAYS`] left) and serve the new one: `Some` when renewed. A
    /// configured or imported certificate is never renewed here.
    pub fn renew_if_due(&self) -> Result<Option<Identity>, TlsError> {
        self.renew_if_due_at(OffsetDateTime::now_utc())
    }

    fn renew_if_due_at(&self, now: OffsetDateTime) -> Result<Option<Identity>, TlsError> {
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
struct SwapResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SwapResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
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

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
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

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| invalid(path, format!("not a PEM private key: {e}")))
}

/// Read (and for the generated identity, create or renew) the certificate of `source`.
fn load(source: &Source, now: OffsetDateTime) -> Result<(CertifiedKey, Identity), TlsError> {
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

/// Names the server certificate is valid for: hostname, hostname.local, localhost, loopback
/// and every local interface address.
pub fn local_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if is_dns_name(h) {
            names.push(h.to_string());
            if !h.ends_with(".local") && !h.contains('.') {
                names.push(format!("{h}.local"));
            }
        }
    }
    names.push("localhost".into());
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(addr) = ifa.address else { continue };
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                let ip = v6.ip();
                // Link-local addresses need a zone to connect to; no client can use them
                // as a certificate name.
                if (ip.segments()[0] & 0xffc0) == 0xfe80 {
                    continue;
                }
                IpAddr::V6(ip)
            } else {
                continue;
            };
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    names.extend(ips.iter().map(IpAddr::to_string));
    names
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Create the CA if missing and (re)issue the server certificate if it is missing, not
/// readable, does not match its key, was issued before the CA was (re)created, or expires
/// within [`RENEW_BEFORE_DAYS`].
fn ensure_generated(dir: &Path, now: OffsetDateTime, names: &[String]) -> Result<(), TlsError> {
    create_private_dir(dir)?;
    let ca_pem = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let (ca_key, new_ca) = if ca_pem.is_file() && ca_key_path.is_file() {
        (read_ca_key(&ca_key_path)?, false)
    } else {
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = ca_params(now);
        params.name_constraints = Some(local_name_constraints(names));
        let cert = params.self_signed(&key).map_err(gen_err)?;
        // Key first: a crash in between leaves no CA certificate without its key.
        write_file(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&ca_pem, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(path = %ca_pem.display(), "created the local certificate authority");
        (key, true)
    };

    let server_pem = dir.join("server.pem");
    let renew_at = now + time::Duration::days(RENEW_BEFORE_DAYS);
    let current = read_certs(&server_pem)
        .ok()
        .and_then(|c| c.first().and_then(|c| cert_not_after(c)));
    if let Some(not_after) = current {
        if new_ca {
            // Signed by a CA that is gone: clients trusting the new ca.pem would refuse it.
            tracing::info!("new local CA; re-issuing the server certificate");
        } else if !pair_matches(&server_pem, &dir.join("server.key")) {
            // E.g. a crash between the two renames of a rotation.
            tracing::warn!(
                "server.key does not match server.pem; re-issuing the server certificate"
            );
        } else if not_after > renew_at.unix_timestamp() {
            return Ok(());
        } else {
            tracing::info!(
                not_after = %utc_string(not_after),
                "server certificate expires soon; renewing"
            );
        }
    }
    issue_server(dir, now, names, ca_key)?;
    tracing::info!(path = %server_pem.display(), names = names.len(), "issued the server certificate");
    Ok(())
}

fn read_ca_key(path: &Path) -> Result<KeyPair, TlsError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    KeyPair::from_pem(&text).map_err(|e| invalid(path, e))
}

/// `key_path` parses and holds the private key of the leaf in `cert_path`.
fn pair_matches(cert_path: &Path, key_path: &Path) -> bool {
    let (Ok(chain), Ok(key)) = (read_certs(cert_path), read_key(key_path)) else {
        return false;
    };
    certified_key(chain, key).is_ok()
}

/// The chain and key as rustls serves them, refusing a key that does not belong to the leaf
/// (or whose public key cannot be compared).
fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, rustls::Error> {
    let signer = provider().key_provider.load_private_key(key)?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match()?;
    Ok(certified)
}

/// Issue a new server key and certificate from the CA key and replace `server.key` /
/// `server.pem` (both staged first, then renamed into place: each file is always whole).
fn issue_server(
    dir: &Path,
    now: OffsetDateTime,
    names: &[String],
    ca_key: KeyPair,
) -> Result<(), TlsError> {
    let issuer = Issuer::new(ca_params(now), ca_key);
    let key = KeyPair::generate().map_err(gen_err)?;
    // A name outside the CA's name constraints would make clients refuse the whole
    // certificate (e.g. an address on a public interface, or a hostname changed since the
    // CA was made): leave it out. CAs made before name constraints have none: all names.
    let permitted = read_certs(&dir.join("ca.pem"))
        .ok()
        .and_then(|c| c.first().and_then(|c| Permitted::of(c)));
    let names: Vec<String> = match &permitted {
        Some(p) => {
            let (kept, dropped): (Vec<String>, Vec<String>) =
                names.iter().cloned().partition(|n| p.allows(n));
            if !dropped.is_empty() {
                tracing::warn!(
                    names = %dropped.join(", "),
                    "left out of the server certificate: outside the local CA's name constraints"
                );
            }
            kept
        }
        None => names.to_vec(),
    };
    let cert = server_params(now, &names)?
        .signed_by(&key, &issuer)
        .map_err(gen_err)?;
    replace_pair(dir, key.serialize_pem().as_bytes(), cert.pem().as_bytes())
}

/// Stage `server.key` (0600) and `server.pem` (0644) next to the live files, then rename them
/// over it, key first, and sync the directory.
fn replace_pair(dir: &Path, key_pem: &[u8], cert_pem: &[u8]) -> Result<(), TlsError> {
    let key_path = dir.join("server.key");
    let cert_path = dir.join("server.pem");
    let key_tmp = stage_file(&key_path, key_pem, 0o600)?;
    let cert_tmp = match stage_file(&cert_path, cert_pem, 0o644) {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&key_tmp);
            return Err(e);
        }
    };
    let renamed = std::fs::rename(&key_tmp, &key_path)
        .map_err(io_err(&key_path))
        .and_then(|()| std::fs::rename(&cert_tmp, &cert_path).map_err(io_err(&cert_path)));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&key_tmp);
        let _ = std::fs::remove_file(&cert_tmp);
    }
    renamed?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "edgeseek");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(CA_VALID_DAYS);
    p
}

/// DNS suffixes a generated CA may sign for besides the machine's own names: names that are
/// local by definition (RFC 6762 `.local`, RFC 8375 `home.arpa`, ICANN's private-use
/// `.internal`, `localhost`).
const LOCAL_DNS: &[&str] = &["localhost", "local", "home.arpa", "internal"];

/// Address ranges a generated CA may sign for: loopback, RFC 1918 private, shared (CGNAT,
/// also used by overlay VPNs), link-local, IPv6 unique-local and link-local.
fn local_nets() -> Vec<(IpAddr, u8)> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    vec![
        (Ipv4Addr::new(127, 0, 0, 0).into(), 8),
        (Ipv4Addr::new(10, 0, 0, 0).into(), 8),
        (Ipv4Addr::new(172, 16, 0, 0).into(), 12),
        (Ipv4Addr::new(192, 168, 0, 0).into(), 16),
        (Ipv4Addr::new(100, 64, 0, 0).into(), 10),
        (Ipv4Addr::new(169, 254, 0, 0).into(), 16),
        (Ipv6Addr::LOCALHOST.into(), 128),
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0).into(), 7),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0).into(), 10),
    ]
}

/// Name constraints of a new local CA: what its server certificates may name (the DNS names
/// among `names`, [`LOCAL_DNS`], [`local_nets`]). A stolen `ca.key` cannot then sign a
/// certificate that clients trusting `ca.pem` accept for a public site.
fn local_name_constraints(names: &[String]) -> NameConstraints {
    let mut dns: Vec<String> = LOCAL_DNS.iter().map(|s| (*s).to_string()).collect();
    for n in names {
        let n = n.to_ascii_lowercase();
        if n.parse::<IpAddr>().is_err() && is_dns_name(&n) && !dns.iter().any(|d| dns_within(&n, d))
        {
            dns.push(n);
        }
    }
    NameConstraints {
        permitted_subtrees: dns
            .into_iter()
            .map(GeneralSubtree::DnsName)
            .chain(local_nets().into_iter().map(|(ip, bits)| {
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, bits))
            }))
            .collect(),
        excluded_subtrees: Vec::new(),
    }
}

/// `name` is `subtree` or below it (RFC 5280 dNSName constraint matching).
fn dns_within(name: &str, subtree: &str) -> bool {
    let (name, subtree) = (name.to_ascii_lowercase(), subtree.to_ascii_lowercase());
    name == subtree || name.ends_with(&format!(".{subtree}"))
}

const OID_NAME_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x1e];

/// The permitted subtrees of a CA certificate's name constraints.
#[derive(Debug, PartialEq, Eq)]
struct Permitted {
    dns: Vec<String>,
    /// Address and mask, both 4 or both 16 bytes.
    nets: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Permitted {
    /// `None` when the certificate has no name constraints (or none that permit).
    fn of(ca_der: &[u8]) -> Option<Permitted> {
        let value = manage::find_extension(ca_der, OID_NAME_CONSTRAINTS)?;
        let (_, constraints, _) = der_tlv(value)?;
        let mut rest = constraints;
        while let Some((tag, subtrees, after)) = der_tlv(rest) {
            rest = after;
            if tag != 0xa0 {
                continue;
            }
            let mut out = Permitted {
                dns: Vec::new(),
                nets: Vec::new(),
            };
            let mut list = subtrees;
            while let Some((_, subtree, after)) = der_tlv(list) {
                list = after;
                let (tag, base, _) = der_tlv(subtree)?;
                match tag {
                    0x82 => out.dns.push(String::from_utf8_lossy(base).into_owned()),
                    0x87 if base.len() == 8 || base.len() == 32 => {
                        let (addr, mask) = base.split_at(base.len() / 2);
                        out.nets.push((addr.to_vec(), mask.to_vec()));
                    }
                    _ => {}
                }
            }
            return Some(out);
        }
        None
    }

    fn allows(&self, name: &str) -> bool {
        match name.parse::<IpAddr>() {
            Ok(ip) => {
                let bytes = match ip {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                self.nets.iter().any(|(addr, mask)| {
                    addr.len() == bytes.len()
                        && bytes
                            .iter()
                            .zip(addr)
                            .zip(mask)
                            .all(|((b, a), m)| b & m == a & m)
                })
            }
            Err(_) => self.dns.iter().any(|d| dns_within(name, d)),
        }
    }
}

fn server_params(now: OffsetDateTime, names: &[String]) -> Result<CertificateParams, TlsError> {
    // Names rcgen cannot encode (e.g. a hostname with an underscore) are skipped, not fatal.
    let usable: Vec<String> = names
        .iter()
        .filter(|n| CertificateParams::new(vec![(*n).clone()]).is_ok())
        .cloned()
        .collect();
    let mut p = CertificateParams::new(usable).map_err(gen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().map_or("edgeseek", String::as_str),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(SERVER_VALID_DAYS);
    Ok(p)
}

/// Like [`crate::util::create_private_dir`]; when root creates it (`sudo edgeseek tls init`
/// before the first start), the new directory is given to the owner of its parent (the state
/// directory, owned by the service user), as [`stage_file`] does for the files in it.
fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::MetadataExt;
    let existed = dir.is_dir();
    crate::util::create_private_dir(dir).map_err(io_err(dir))?;
    if !existed && nix::unistd::geteuid().is_root() {
        if let Some(owner) = dir.parent().and_then(|d| std::fs::metadata(d).ok()) {
            std::os::unix::fs::chown(dir, Some(owner.uid()), Some(owner.gid()))
                .map_err(io_err(dir))?;
        }
    }
    Ok(())
}

/// Write through a temporary file and rename, so readers never see half a file; the mode is
/// set at creation, so a key is never readable by others even briefly.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = stage_file(path, bytes, mode)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

/// Write `bytes` to `<path>.tmp` (created with `mode`, synced) and return that path. When root
/// writes (`sudo edgeseek tls rotate`), the file is given to the owner of the directory, so a
/// daemon running as the service user can still read its key.
fn stage_file(path: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf, TlsError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    let tmp = PathBuf::from(name);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    let written = (|| {
        if nix::unistd::geteuid().is_root() {
            if let Some(owner) = path.parent().and_then(|d| std::fs::metadata(d).ok()) {
                std::os::unix::fs::fchown(&f, Some(owner.uid()), Some(owner.gid()))?;
            }
        }
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    Ok(tmp)
}

/// The `notAfter` of an X.509 certificate (Unix seconds).
pub fn cert_not_after(der: &[u8]) -> Option<i64> {
    manage::CertInfo::parse(der).map(|c| c.not_after)
}

/// One DER tag-length-value: `(tag, content, rest)`.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, 0x18).
fn parse_der_time(tag: u8, bytes: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(bytes).ok()?;
    let s = s.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i32 = s.get(..2)?.parse().ok()?;
            // RFC 5280: YY >= 50 means 19YY.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    if rest.len() != 10 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |i: usize| rest.get(i..i + 2).and_then(|x| x.parse::<u8>().ok());
    let month = time::Month::try_from(num(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, num(2)?).ok()?;
    let dt = date.with_hms(num(4)?, num(6)?, num(8)?).ok()?;
    Some(dt.assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn generates_ca_and_server_with_private_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmp();
        let tls = dir.path().join("tls");
        let now = OffsetDateTime::now_utc();
        ensure_generated(&tls, now, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        for f in ["ca.pem", "ca.key", "server.pem", "server.key"] {
            assert!(tls.join(f).is_file(), "{f}");
        }
        for f in ["ca.key", "server.key"] {
            let mode = std::fs::metadata(tls.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let ca = read_certs(&tls.join("ca.pem")).unwrap();
        let ca_exp = cert_not_after(&ca[0]).unwrap();
        let days = (ca_exp - now.unix_timestamp()) / 86400;
        assert!((3649..=3650).contains(&days), "{days}");
        let leaf = read_certs(&tls.join("server.pem")).unwrap();
        let leaf_exp = cert_not_after(&leaf[0]).unwrap();
        assert_eq!((leaf_exp - now.unix_timestamp()) / 86400, 365);
    }

    #[test]
    fn keeps_a_valid_server_cert_and_renews_an_expiring_one() {
        let dir = tmp();
        let tls = dir.path().join("tls");
        let names = vec!["localhost".to_string()];
        let now = OffsetDateTime::now_utc();
        ensure_generated(&tls, now, &names).unwrap();
        let first = std::fs::read(tls.join("server.pem")).unwrap();
        let ca = std::fs::read(tls.join("ca.pem")).unwrap();
        // Restarting tomorrow keeps the certificate.
        ensure_generated(&tls, now + time::Duration::days(1), &names).unwrap();
        assert_eq!(first, std::fs::read(tls.join("server.pem")).unwrap());
        // 340 days later fewer than 30 days are left: renewed, the CA is kept.
        ensure_generated(&tls, now + time::Duration::days(340), &names).unwrap();
        assert_ne!(first, std::fs::read(tls.join("server.pem")).unwrap());
        assert_eq!(ca, std::fs::read(tls.join("ca.pem")).unwrap());
    }

    #[test]
    fn server_loads_and_reload_swaps_the_identity() {
        let dir = tmp();
        let server = TlsServer::new(&TlsConfig::default(), dir.path()).unwrap();
        let id = server.identity();
        assert_eq!(id.fingerprint.len(), 32 * 3 - 1);
        assert_eq!(id.ca_path, Some(dir.path().join("tls/ca.pem")));
        assert_eq!(server.config().alpn_protocols[0], b"h2".to_vec());
        // Reload without changes keeps the certificate; rotate issues a new one.
        assert_eq!(server.reload().unwrap(), id);
        let rotated = server.rotate().unwrap();
        assert_ne!(rotated.fingerprint, id.fingerprint);
        assert_eq!(server.identity(), rotated);
    }

    #[test]
    fn configured_cert_needs_both_files_and_names_a_bad_one() {
        let dir = tmp();
        let half = TlsConfig {
            cert: Some(dir.path().join("c.pem")),
            ..TlsConfig::default()
        };
        assert!(TlsServer::new(&half, dir.path())
            .unwrap_err()
            .to_string()
            .contains("together"));
        std::fs::write(dir.path().join("c.pem"), "not pem").unwrap();
        std::fs::write(dir.path().join("k.pem"), "not pem").unwrap();
        let bad = TlsConfig {
            cert: Some(dir.path().join("c.pem")),
            key: Some(dir.path().join("k.pem")),
            ..TlsConfig::default()
        };
        let e = TlsServer::new(&bad, dir.path()).unwrap_err().to_string();
        assert!(e.contains("c.pem"), "{e}");
    }

    #[test]
    fn client_ca_bundle_loads_and_a_bad_one_is_named() {
        let dir = tmp();
        // Any CA certificate works as a client-CA bundle; reuse the generated one.
        TlsServer::new(&TlsConfig::default(), dir.path()).unwrap();
        let bundle = dir.path().join("tls/ca.pem");
        let mtls = TlsConfig {
            client_ca: Some(bundle),
            ..TlsConfig::default()
        };
        assert!(TlsServer::new(&mtls, dir.path()).is_ok());
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let bad = TlsConfig {
            client_ca: Some(dir.path().join("empty.pem")),
            ..TlsConfig::default()
        };
        let e = TlsServer::new(&bad, dir.path()).unwrap_err().to_string();
        assert!(e.contains("empty.pem"), "{e}");
    }

    #[test]
    fn a_new_ca_is_name_constrained_to_local_names() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{ServerName, UnixTime};
        let dir = tmp();
        let tls = dir.path().join("tls");
        let now = OffsetDateTime::now_utc();
        let names: Vec<String> = [
            "edge01",
            "edge01.local",
            "localhost",
            "127.0.0.1",
            "192.168.1.20",
            "8.8.8.8",
            "::1",
            "2001:db8::1",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        ensure_generated(&tls, now, &names).unwrap();
        let ca = read_certs(&tls.join("ca.pem")).unwrap().remove(0);
        let permitted = Permitted::of(&ca).unwrap();
        assert_eq!(
            permitted.dns,
            vec!["localhost", "local", "home.arpa", "internal", "edge01"]
        );
        for ok in [
            "edge01",
            "EDGE01.local",
            "x.home.arpa",
            "10.1.2.3",
            "172.31.0.1",
            "fd00::5",
            "fe80::1",
        ] {
            assert!(permitted.allows(ok), "{ok}");
        }
        for no in [
            "example.com",
            "local.example.com",
            "8.8.8.8",
            "172.32.0.1",
            "2001:db8::1",
        ] {
            assert!(!permitted.allows(no), "{no}");
        }
        // The server certificate leaves out the public addresses.
        let leaf = read_certs(&tls.join("server.pem")).unwrap().remove(0);
        let sans = manage::CertInfo::parse(&leaf).unwrap().sans;
        assert_eq!(
            sans,
            vec![
                "edge01",
                "edge01.local",
                "localhost",
                "127.0.0.1",
                "192.168.1.20",
                "::1"
            ]
        );

        // Clients that trust ca.pem accept the server certificate and refuse one the CA key
        // signed for a public name.
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let verify = |leaf: &CertificateDer<'_>, name: &str| {
            verifier.verify_server_cert(
                leaf,
                &[],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
        };
        assert!(verify(&leaf, "localhost").is_ok());
        assert!(verify(&leaf, "192.168.1.20").is_ok());
        let issuer = Issuer::new(ca_params(now), read_ca_key(&tls.join("ca.key")).unwrap());
        let key = KeyPair::generate().unwrap();
        for public in ["example.com", "8.8.8.8"] {
            let forged = server_params(now, &[public.to_string()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            let e = verify(forged.der(), public).unwrap_err();
            assert!(format!("{e:?}").contains("NameConstraint"), "{e:?}");
        }
    }

    #[test]
    fn an_unconstrained_ca_keeps_issuing_every_name() {
        // A CA made before name constraints (no extension) keeps working, all names kept.
        let dir = tmp();
        let tls = dir.path().join("tls");
        let now = OffsetDateTime::now_utc();
        create_private_dir(&tls).unwrap();
        let key = KeyPair::generate().unwrap();
        let ca = ca_params(now).self_signed(&key).unwrap();
        write_file(&tls.join("ca.key"), key.serialize_pem().as_bytes(), 0o600).unwrap();
        write_file(&tls.join("ca.pem"), ca.pem().as_bytes(), 0o644).unwrap();
        assert_eq!(Permitted::of(ca.der()), None);
        let names = vec!["localhost".to_string(), "8.8.8.8".to_string()];
        ensure_generated(&tls, now, &names).unwrap();
        let leaf = read_certs(&tls.join("server.pem")).unwrap().remove(0);
        assert_eq!(manage::CertInfo::parse(&leaf).unwrap().sans, names);
    }

    #[test]
    fn renewal_timer_renews_only_in_the_window() {
        let dir = tmp();
        let server = TlsServer::new(&TlsConfig::default(), dir.path()).unwrap();
        let id = server.identity();
        let now = OffsetDateTime::now_utc();
        assert_eq!(server.renew_if_due_at(now).unwrap(), None);
        assert_eq!(server.identity(), id);
        let renewed = server
            .renew_if_due_at(now + time::Duration::days(340))
            .unwrap()
            .unwrap();
        assert_ne!(renewed.fingerprint, id.fingerprint);
        assert!(renewed.not_after > id.not_after);
        assert_eq!(server.identity(), renewed);
        // A configured certificate is never renewed by the timer.
        let cfg = TlsConfig {
            cert: Some(dir.path().join("tls/server.pem")),
            key: Some(dir.path().join("tls/server.key")),
            ..TlsConfig::default()
        };
        let configured = TlsServer::new(&cfg, dir.path()).unwrap();
        assert_eq!(
            configured
                .renew_if_due_at(now + time::Duration::days(3000))
                .unwrap(),
            None
        );
    }

    #[test]
    fn client_ca_and_crl_are_reread_on_reload() {
        let dir = tmp();
        let now = OffsetDateTime::now_utc();
        // A client CA with key usages that allow CRL signing.
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params(now).self_signed(&ca_key).unwrap();
        let ca_path = dir.path().join("clients.pem");
        let crl_path = dir.path().join("clients.crl");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let issuer = Issuer::new(ca_params(now), ca_key);
        let crl = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(7),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(42u64),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap();
        std::fs::write(&crl_path, crl.pem().unwrap()).unwrap();
        let cfg = TlsConfig {
            client_ca: Some(ca_path.clone()),
            client_crl: Some(crl_path.clone()),
            ..TlsConfig::default()
        };
        let server = TlsServer::new(&cfg, dir.path()).unwrap();
        let before = server.config();
        server.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &server.config()), "rebuilt on reload");
        // A broken CRL: reload fails naming it and the running config stays.
        std::fs::write(&crl_path, "garbage").unwrap();
        let current = server.config();
        let e = server.reload().unwrap_err().to_string();
        assert!(e.contains("clients.crl"), "{e}");
        assert!(Arc::ptr_eq(&current, &server.config()));
        // Without client auth the config is built once.
        let plain = TlsServer::new(&TlsConfig::default(), dir.path()).unwrap();
        let c = plain.config();
        plain.reload().unwrap();
        assert!(Arc::ptr_eq(&c, &plain.config()));
    }

    #[test]
    fn der_time_parsing() {
        assert_eq!(parse_der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(parse_der_time(0x18, b"20000101000000Z"), Some(946_684_800));
        assert_eq!(parse_der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(parse_der_time(0x17, b"7001010000Z"), None);
        assert_eq!(parse_der_time(0x05, b"700101000000Z"), None);
        assert_eq!(cert_not_after(&[0x30, 0x03, 0x02, 0x01, 0x00]), None);
        assert_eq!(cert_not_after(&[]), None);
    }

    #[test]
    fn names_include_loopback_and_are_valid() {
        let names = local_names();
        assert!(names.contains(&"localhost".to_string()));
        assert!(names.contains(&"127.0.0.1".to_string()));
        assert!(names.contains(&"::1".to_string()));
        assert!(is_dns_name("edge-01.local"));
        assert!(!is_dns_name("bad_name"));
        assert!(!is_dns_name(""));
    }

    #[test]
    fn fingerprint_format() {
        let f = fingerprint(b"abc");
        assert!(f.starts_with("BA:78:16:BF"), "{f}");
        assert_eq!(utc_string(0), "1970-01-01T00:00:00Z");
    }
}
