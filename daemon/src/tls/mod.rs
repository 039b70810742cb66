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

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

mod server;
pub use server::*;
mod generate;
pub use generate::*;
mod constraints;
use constraints::*;
mod der;
pub use der::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::expect_err;
    use std::sync::Arc;

    use rcgen::{Issuer, KeyPair};
    use rustls::pki_types::CertificateDer;
    use rustls::RootCertStore;

    use crate::config::TlsConfig;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// Writes `content` to `dir/name`; a server whose config `set` points at that file must
    /// fail to start with an error that names it.
    fn bad_file_is_named(
        dir: &Path,
        name: &str,
        content: &str,
        set: impl FnOnce(&mut TlsConfig, PathBuf),
    ) {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let mut config = TlsConfig::default();
        set(&mut config, path);
        expect_err(TlsServer::new(&config, dir), &[name]);
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
        std::fs::write(dir.path().join("k.pem"), "not pem").unwrap();
        bad_file_is_named(dir.path(), "c.pem", "not pem", |c, cert| {
            c.cert = Some(cert);
            c.key = Some(dir.path().join("k.pem"));
        });
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
        bad_file_is_named(dir.path(), "empty.pem", "", |c, ca| c.client_ca = Some(ca));
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
        expect_err(server.reload(), &["clients.crl"]);
        assert!(Arc::ptr_eq(&current, &server.config()));
        // Without client auth the config is built once.
        let plain = TlsServer::new(&TlsConfig::default(), dir.path()).unwrap();
        let c = plain.config();
        plain.reload().unwrap();
        assert!(Arc::ptr_eq(&c, &plain.config()));
    }

    #[test]
    fn fingerprint_format() {
        let f = fingerprint(b"abc");
        assert!(f.starts_with("BA:78:16:BF"), "{f}");
        assert_eq!(utc_string(0), "1970-01-01T00:00:00Z");
    }
}
