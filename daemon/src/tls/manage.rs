//! `edgeseek tls show | rotate | import`: the TLS identity as files, without a daemon.
//!
//! - `show` reads the served certificate (configured paths, else `<state_dir>/tls/server.pem`)
//!   and never creates anything.
//! - `rotate` issues a new server key and certificate from the local CA (the CA is kept, so
//!   clients that trust `ca.pem` trust the new one) and replaces `server.key` / `server.pem`.
//!   A configured or imported certificate has no CA to rotate with: refused.
//! - `import` validates a PEM chain and key (they parse, the key is the leaf's, the leaf is
//!   valid now, the chain is in order) before writing anything, then copies them over
//!   `server.pem` / `server.key` and writes the [`IMPORTED_MARKER`], so renewal from the local
//!   CA leaves them alone.
//!
//! Telling a running daemon to serve the new files is the caller's job (the admin socket's
//! `reload`, or SIGHUP).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use time::OffsetDateTime;

use super::{
    certified_key, create_private_dir, der_items, der_tlv, ensure_generated, fingerprint, invalid,
    io_err, is_imported, issue_server, local_names, parse_der_time, read_ca_key, read_certs,
    read_key, replace_pair, utc_string, write_file, IdentityKind, Source, TlsError,
    IMPORTED_MARKER, RENEW_BEFORE_DAYS,
};
use crate::config::TlsConfig;
use crate::util::hex;

/// The fields of an X.509 certificate `tls show` reports, read with a minimal DER walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// `CN=…, O=…` in the order of the certificate.
    pub subject: String,
    pub issuer: String,
    /// subjectAltName entries: DNS names and IP addresses as they are, others prefixed
    /// (`email:`, `URI:`).
    pub sans: Vec<String>,
    /// Validity, Unix seconds (UTC).
    pub not_before: i64,
    pub not_after: i64,
    /// DER contents of the subject and issuer names (to check that a chain is in order).
    subject_der: Vec<u8>,
    issuer_der: Vec<u8>,
}

const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

impl CertInfo {
    /// `Certificate → tbsCertificate → [version] serial signature issuer validity subject
    /// spki [issuerUID] [subjectUID] [extensions]`; `None` when the DER is not that shape.
    pub fn parse(der: &[u8]) -> Option<CertInfo> {
        let (tag, cert, _) = der_tlv(der)?;
        if tag != 0x30 {
            return None;
        }
        let (tag, tbs, _) = der_tlv(cert)?;
        if tag != 0x30 {
            return None;
        }
        let mut rest = tbs;
        let (tag, _, after) = der_tlv(rest)?;
        if tag == 0xa0 {
            rest = after; // explicit [0] version
        }
        take(&mut rest, 0x02)?; // serial
        take(&mut rest, 0x30)?; // signature algorithm
        let issuer = take(&mut rest, 0x30)?;
        let validity = take(&mut rest, 0x30)?;
        let subject = take(&mut rest, 0x30)?;
        take(&mut rest, 0x30)?; // subjectPublicKeyInfo
        let (tag, nb, after_nb) = der_tlv(validity)?;
        let not_before = parse_der_time(tag, nb)?;
        let (tag, na, _) = der_tlv(after_nb)?;
        let not_after = parse_der_time(tag, na)?;
        let mut sans = Vec::new();
        while let Some((tag, content, after)) = der_tlv(rest) {
            rest = after;
            if tag == 0xa3 {
                sans = subject_alt_names(content)?;
            }
        }
        Some(CertInfo {
            subject: name_string(subject)?,
            issuer: name_string(issuer)?,
            sans,
            not_before,
            not_after,
            subject_der: subject.to_vec(),
            issuer_der: issuer.to_vec(),
        })
    }
}

/// The value (contents of `extnValue`) of the extension `oid` of a DER certificate.
pub(super) fn find_extension<'a>(der: &'a [u8], oid: &[u8]) -> Option<&'a [u8]> {
    let (_, cert, _) = der_tlv(der)?;
    let (_, tbs, _) = der_tlv(cert)?;
    for (_, content) in der_items(tbs).filter(|(tag, _)| *tag == 0xa3) {
        let (_, exts, _) = der_tlv(content)?;
        for (_, ext) in der_items(exts) {
            let (tag, id, rest) = der_tlv(ext)?;
            if tag != 0x06 || id != oid {
                continue;
            }
            let (mut tag, mut value, after) = der_tlv(rest)?;
            if tag == 0x01 {
                (tag, value, _) = der_tlv(after)?;
            }
            return (tag == 0x04).then_some(value);
        }
    }
    None
}

/// The next TLV of `rest` if it has tag `expected`; advances `rest`.
fn take<'a>(rest: &mut &'a [u8], expected: u8) -> Option<&'a [u8]> {
    let cur: &'a [u8] = rest;
    let (tag, content, after) = der_tlv(cur)?;
    *rest = after;
    (tag == expected).then_some(content)
}

/// The subjectAltName entries in `[3] { SEQUENCE OF Extension }`.
fn subject_alt_names(explicit: &[u8]) -> Option<Vec<String>> {
    let (tag, mut exts, _) = der_tlv(explicit)?;
    if tag != 0x30 {
        return None;
    }
    while let Some((tag, ext, after)) = der_tlv(exts) {
        exts = after;
        if tag != 0x30 {
            return None;
        }
        // Extension ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue }
        let (tag, oid, mut rest) = der_tlv(ext)?;
        if tag != 0x06 || oid != OID_SUBJECT_ALT_NAME {
            continue;
        }
        let (mut tag, mut value, after) = der_tlv(rest)?;
        if tag == 0x01 {
            rest = after;
            (tag, value, _) = der_tlv(rest)?;
        }
        if tag != 0x04 {
            return None;
        }
        let (tag, mut names, _) = der_tlv(value)?;
        if tag != 0x30 {
            return None;
        }
        let mut out = Vec::new();
        while let Some((tag, v, after)) = der_tlv(names) {
            names = after;
            let text = String::from_utf8_lossy(v);
            match tag {
                0x82 => out.push(text.into_owned()),
                0x87 => match v.len() {
                    4 => out.push(IpAddr::from(<[u8; 4]>::try_from(v).ok()?).to_string()),
                    16 => out.push(IpAddr::from(<[u8; 16]>::try_from(v).ok()?).to_string()),
                    _ => out.push(format!("IP:{}", hex(v))),
                },
                0x81 => out.push(format!("email:{text}")),
                0x86 => out.push(format!("URI:{text}")),
                _ => {}
            }
        }
        return Some(out);
    }
    Some(Vec::new())
}

/// `Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }` as `CN=…, O=…`.
fn name_string(mut rdns: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    while let Some((tag, set, after)) = der_tlv(rdns) {
        rdns = after;
        if tag != 0x31 {
            return None;
        }
        let mut set = set;
        while let Some((tag, atv, after)) = der_tlv(set) {
            set = after;
            if tag != 0x30 {
                return None;
            }
            let (tag, oid, rest) = der_tlv(atv)?;
            if tag != 0x06 {
                return None;
            }
            let (vtag, value, _) = der_tlv(rest)?;
            let value = match vtag {
                // BMPString: UTF-16BE
                0x1e => {
                    let units: Vec<u16> = value
                        .chunks(2)
                        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                        .collect();
                    String::from_utf16_lossy(&units)
                }
                _ => String::from_utf8_lossy(value).into_owned(),
            };
            parts.push(format!("{}={value}", attribute_name(oid)));
        }
    }
    Some(parts.join(", "))
}

fn attribute_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x05] => "serialNumber".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC".into(),
        other => dotted_oid(other),
    }
}

fn dotted_oid(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc = 0u64;
    for &b in oid {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// What `edgeseek tls show` reports about the served identity.
#[derive(Clone, Debug)]
pub struct Shown {
    pub kind: IdentityKind,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The local CA clients trust; `None` unless the identity is generated.
    pub ca_path: Option<PathBuf>,
    /// SHA-256 of the leaf, `AA:BB:…`.
    pub fingerprint: String,
    /// Certificates in the served file (leaf first).
    pub chain_len: usize,
    pub info: CertInfo,
}

/// `edgeseek tls … --json`: the identity as shown, and what the command did. The keys are
/// in alphabetical order, the order the output has always had.
#[derive(Debug, Serialize)]
pub struct ShownJson<'a> {
    ca: Option<&'a Path>,
    cert: &'a Path,
    chain_length: usize,
    /// `tls init`: whether it created the identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// `tls rotate` / `tls import`: whether a running daemon reloaded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_reloaded: Option<bool>,
    days_left: i64,
    expired: bool,
    fingerprint_sha256: &'a str,
    issuer: &'a str,
    key: &'a Path,
    not_after: String,
    not_before: String,
    sans: &'a [String],
    source: &'static str,
    subject: &'a str,
}

impl Shown {
    /// Whole days until `not_after` (negative once expired).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.info.not_after - now).div_euclid(86_400)
    }

    pub fn to_json(&self, now: i64) -> ShownJson<'_> {
        ShownJson {
            ca: self.ca_path.as_deref(),
            cert: &self.cert_path,
            chain_length: self.chain_len,
            created: None,
            daemon_reloaded: None,
            days_left: self.days_left(now),
            expired: self.info.not_after < now,
            fingerprint_sha256: &self.fingerprint,
            issuer: &self.info.issuer,
            key: &self.key_path,
            not_after: utc_string(self.info.not_after),
            not_before: utc_string(self.info.not_before),
            sans: &self.info.sans,
            source: self.kind.as_str(),
            subject: &self.info.subject,
        }
    }

    /// `label  value` lines for people.
    pub fn to_text(&self, now: i64) -> String {
        let source = match self.kind {
            IdentityKind::Generated => format!(
                "generated by the local CA (renewed automatically {RENEW_BEFORE_DAYS} days before expiry)"
            ),
            IdentityKind::Imported => {
                "imported (edgeseek tls import; not renewed by edgeseek)".to_string()
            }
            IdentityKind::Configured => "configured (tls.cert / tls.key)".to_string(),
        };
        let days = self.days_left(now);
        let left = if self.info.not_after < now {
            "EXPIRED".to_string()
        } else {
            format!("{days} days left")
        };
        let ca = match &self.ca_path {
            Some(p) => format!("{} (clients trust this file)", p.display()),
            None => "- (not issued by the local CA)".to_string(),
        };
        let rows = [
            ("source", source),
            ("subject", self.info.subject.clone()),
            ("names", self.info.sans.join(", ")),
            ("issuer", self.info.issuer.clone()),
            ("fingerprint", format!("sha256 {}", self.fingerprint)),
            ("not before", utc_string(self.info.not_before)),
            (
                "not after",
                format!("{} ({left})", utc_string(self.info.not_after)),
            ),
            ("ca", ca),
            ("certificate", self.cert_path.display().to_string()),
            ("key", self.key_path.display().to_string()),
        ];
        rows.iter().map(|(k, v)| format!("{k:<12} {v}\n")).collect()
    }
}

/// The served identity as the files say, creating nothing.
pub fn show(cfg: &TlsConfig, state_dir: &Path) -> Result<Shown, TlsError> {
    describe(&Source::of(cfg, state_dir)?)
}

fn describe(source: &Source) -> Result<Shown, TlsError> {
    let (cert_path, key_path, ca_path, kind) = match source {
        Source::Configured { cert, key } => {
            (cert.clone(), key.clone(), None, IdentityKind::Configured)
        }
        Source::Generated { dir } => {
            let cert = dir.join("server.pem");
            if !cert.exists() {
                return Err(TlsError::Missing { dir: dir.clone() });
            }
            let (ca, kind) = if is_imported(dir) {
                (None, IdentityKind::Imported)
            } else {
                (Some(dir.join("ca.pem")), IdentityKind::Generated)
            };
            (cert, dir.join("server.key"), ca, kind)
        }
    };
    let chain = read_certs(&cert_path)?;
    let info = CertInfo::parse(&chain[0])
        .ok_or_else(|| invalid(&cert_path, "not an X.509 certificate"))?;
    Ok(Shown {
        kind,
        fingerprint: fingerprint(&chain[0]),
        chain_len: chain.len(),
        cert_path,
        key_path,
        ca_path,
        info,
    })
}

/// The private key of `shown` is readable and belongs to its certificate: what `serve` would
/// refuse at start (`edgeseek doctor`). Reads only.
pub fn check_key(shown: &Shown) -> Result<(), TlsError> {
    let chain = read_certs(&shown.cert_path)?;
    let key = read_key(&shown.key_path)?;
    certified_key(chain, key).map(|_| ()).map_err(|e| {
        invalid(
            &shown.key_path,
            format!("does not match {}: {e}", shown.cert_path.display()),
        )
    })
}

/// What `edgeseek tls init` did.
#[derive(Clone, Debug)]
pub struct Initialized {
    /// `true` when this call created the server certificate (and the CA, if there was none).
    pub created: bool,
    pub shown: Shown,
}

/// `edgeseek tls init`: create the local CA and server certificate in `<state_dir>/tls` now,
/// exactly as the first `edgeseek serve` would, without serving (first boot runs it before
/// the daemon ever starts). Idempotent: an existing identity is kept (and renewed if it is
/// due, as at every start); a configured or imported certificate is only described.
pub fn init(cfg: &TlsConfig, state_dir: &Path) -> Result<Initialized, TlsError> {
    init_at(cfg, state_dir, OffsetDateTime::now_utc(), &local_names())
}

fn init_at(
    cfg: &TlsConfig,
    state_dir: &Path,
    now: OffsetDateTime,
    names: &[String],
) -> Result<Initialized, TlsError> {
    let source = Source::of(cfg, state_dir)?;
    let created = match &source {
        Source::Generated { dir } if !is_imported(dir) => {
            let existed = dir.join("server.pem").is_file();
            ensure_generated(dir, now, names)?;
            !existed
        }
        _ => false,
    };
    Ok(Initialized {
        created,
        shown: describe(&source)?,
    })
}

/// `edgeseek tls rotate`: a new server key and certificate from the local CA, in place.
pub fn rotate(cfg: &TlsConfig, state_dir: &Path) -> Result<Shown, TlsError> {
    let source = Source::of(cfg, state_dir)?;
    rotate_source(&source, OffsetDateTime::now_utc(), &local_names())?;
    describe(&source)
}

pub(super) fn rotate_source(
    source: &Source,
    now: OffsetDateTime,
    names: &[String],
) -> Result<(), TlsError> {
    match source {
        Source::Configured { cert, .. } => Err(TlsError::Refused(format!(
            "the certificate is configured (tls.cert = {}); there is no local CA to rotate \
             with: replace the files and send the daemon SIGHUP",
            cert.display()
        ))),
        Source::Generated { dir } if is_imported(dir) => Err(TlsError::Refused(format!(
            "the certificate in {} was imported and there is no local CA to rotate it with: \
             import a new one, or delete {} and run `edgeseek tls rotate` to go back to the \
             local CA",
            dir.display(),
            dir.join(IMPORTED_MARKER).display()
        ))),
        Source::Generated { dir } => {
            let ca_key = dir.join("ca.key");
            if !ca_key.is_file() || !dir.join("ca.pem").is_file() {
                return Err(TlsError::Missing { dir: dir.clone() });
            }
            issue_server(dir, now, names, read_ca_key(&ca_key)?)?;
            tracing::debug!(dir = %dir.display(), "rotated the server certificate");
            Ok(())
        }
    }
}

/// `edgeseek tls import CERT KEY`: validate, then make them the served identity.
pub fn import(
    cfg: &TlsConfig,
    state_dir: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Shown, TlsError> {
    import_at(cfg, state_dir, cert, key, OffsetDateTime::now_utc())
}

fn import_at(
    cfg: &TlsConfig,
    state_dir: &Path,
    cert: &Path,
    key: &Path,
    now: OffsetDateTime,
) -> Result<Shown, TlsError> {
    let source = Source::of(cfg, state_dir)?;
    let Source::Generated { dir } = &source else {
        return Err(TlsError::Refused(
            "tls.cert / tls.key are set in the config, so the state directory's certificate \
             is not served: point them at the new files instead"
                .into(),
        ));
    };
    // Everything is checked on the bytes read once, before anything is written.
    let cert_pem = std::fs::read(cert).map_err(io_err(cert))?;
    let key_pem = std::fs::read(key).map_err(io_err(key))?;
    validate(cert, &cert_pem, key, &key_pem, now.unix_timestamp())?;

    create_private_dir(dir)?;
    let marker = dir.join(IMPORTED_MARKER);
    let had_marker = marker.exists();
    let note = format!(
        "imported by `edgeseek tls import` from {} and {} at {}; not renewed by edgeseek.\n\
         Delete this file and run `edgeseek tls rotate` to go back to the local CA.\n",
        cert.display(),
        key.display(),
        utc_string(now.unix_timestamp())
    );
    // Marker first: the local CA must never renew over the imported files, even if the
    // import is interrupted.
    write_file(&marker, note.as_bytes(), 0o644)?;
    if let Err(e) = replace_pair(dir, &key_pem, &cert_pem) {
        if !had_marker {
            let _ = std::fs::remove_file(&marker);
        }
        return Err(e);
    }
    tracing::debug!(cert = %cert.display(), dir = %dir.display(), "imported a TLS certificate");
    describe(&source)
}

/// The chain parses (leaf first, each certificate issued by the next), the key parses and is
/// the leaf's, and the leaf is valid at `now`.
fn validate(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
    now: i64,
) -> Result<(), TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, format!("not a PEM certificate file: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(cert, "no PEM certificate in the file"));
    }
    let infos = chain
        .iter()
        .enumerate()
        .map(|(i, c)| {
            CertInfo::parse(c)
                .ok_or_else(|| invalid(cert, format!("certificate {} is not X.509", i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (i, pair) in infos.windows(2).enumerate() {
        if pair[0].issuer_der != pair[1].subject_der {
            return Err(invalid(
                cert,
                format!(
                    "certificate {} was not issued by certificate {} (the chain must be the \
                     server certificate first, then its issuers in order)",
                    i + 1,
                    i + 2
                ),
            ));
        }
    }
    let leaf = &infos[0];
    if leaf.not_after < now {
        return Err(invalid(
            cert,
            format!("the certificate expired on {}", utc_string(leaf.not_after)),
        ));
    }
    if leaf.not_before > now {
        return Err(invalid(
            cert,
            format!(
                "the certificate is not valid before {}",
                utc_string(leaf.not_before)
            ),
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| invalid(key, format!("not a PEM private key: {e}")))?;
    certified_key(chain, private).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => invalid(
            key,
            format!(
                "is not the private key of {} (the public keys differ)",
                cert.display()
            ),
        ),
        other => invalid(key, format!("unusable private key: {other}")),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::expect_err;
    use rcgen::{CertificateParams, KeyPair};
    use rustls::client::danger::ServerCertVerifier;
    use std::collections::BTreeMap;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// Every file under `dir` with its bytes and mode: "nothing changed on disk".
    fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            out.insert(
                e.file_name().to_string_lossy().into_owned(),
                (std::fs::read(e.path()).unwrap(), meta.permissions().mode()),
            );
        }
        out
    }

    /// A self-signed leaf for `localhost` valid from `from` for `days`; returns (cert, key) PEM.
    fn self_signed(from: OffsetDateTime, days: i64) -> (String, String) {
        self_signed_named("localhost", from, days)
    }

    fn self_signed_named(cn: &str, from: OffsetDateTime, days: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".into()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.not_before = from;
        p.not_after = from + time::Duration::days(days);
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn generated(dir: &Path) -> PathBuf {
        let tls = dir.join("tls");
        ensure_generated(&tls, now(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        tls
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn show_reads_the_generated_identity_without_a_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let e = show(&TlsConfig::default(), dir.path()).unwrap_err();
        assert!(matches!(e, TlsError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("first `edgeseek serve`"), "{e}");
        assert!(!dir.path().join("tls").exists(), "show must create nothing");

        let tls = generated(dir.path());
        let s = show(&TlsConfig::default(), dir.path()).unwrap();
        assert_eq!(s.kind, IdentityKind::Generated);
        assert_eq!(s.ca_path, Some(tls.join("ca.pem")));
        assert_eq!(s.info.subject, "CN=localhost");
        assert_eq!(s.info.issuer, "CN=edgeseek local CA, O=edgeseek");
        assert_eq!(s.info.sans, vec!["localhost", "127.0.0.1"]);
        let days = s.days_left(now().unix_timestamp());
        assert!((364..=365).contains(&days), "{days}");
        let j = serde_json::to_value(s.to_json(now().unix_timestamp())).unwrap();
        assert_eq!(j["source"], "generated");
        assert_eq!(j["fingerprint_sha256"].as_str().unwrap().len(), 95);
        assert!(s.to_text(0).contains("fingerprint  sha256 "));
    }

    #[test]
    fn init_creates_the_identity_once_and_then_keeps_it() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let names = ["localhost".to_string(), "127.0.0.1".to_string()];
        let first = init_at(&TlsConfig::default(), dir.path(), now(), &names).unwrap();
        assert!(first.created);
        assert_eq!(first.shown.kind, IdentityKind::Generated);
        assert_eq!(first.shown.info.sans, names);
        let tls = dir.path().join("tls");
        for (f, mode) in [("ca.key", 0o600), ("server.key", 0o600), ("ca.pem", 0o644)] {
            let m = std::fs::metadata(tls.join(f)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, mode, "{f}");
        }
        let dmode = std::fs::metadata(&tls).unwrap().permissions().mode();
        assert_eq!(dmode & 0o777, 0o700);
        let files = snapshot(&tls);
        let again = init_at(&TlsConfig::default(), dir.path(), now(), &names).unwrap();
        assert!(!again.created);
        assert_eq!(again.shown.fingerprint, first.shown.fingerprint);
        assert_eq!(snapshot(&tls), files, "a second init must change nothing");
        // What `serve` would present is what init made.
        let served = crate::tls::TlsServer::new(&TlsConfig::default(), dir.path()).unwrap();
        assert_eq!(served.identity().fingerprint, first.shown.fingerprint);

        // root initialising a state directory that belongs to the service user hands the new
        // tls/ directory and its files to that user; anyone else owns what they create.
        let owned = tempfile::tempdir().unwrap();
        let root = nix::unistd::geteuid().is_root();
        if root {
            std::os::unix::fs::chown(owned.path(), Some(4242), Some(4343)).unwrap();
        }
        init_at(&TlsConfig::default(), owned.path(), now(), &names).unwrap();
        let (uid, gid) = if root {
            (4242, 4343)
        } else {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        };
        for f in ["", "ca.key", "ca.pem", "server.key", "server.pem"] {
            let m = std::fs::metadata(owned.path().join("tls").join(f)).unwrap();
            assert_eq!((m.uid(), m.gid()), (uid, gid), "tls/{f}");
        }
    }

    #[test]
    fn init_leaves_a_configured_or_imported_certificate_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(now() - time::Duration::days(1), 30);
        let cert = write(dir.path(), "c.pem", &cert);
        let key = write(dir.path(), "k.pem", &key);
        let cfg = TlsConfig {
            cert: Some(cert.clone()),
            key: Some(key.clone()),
            ..TlsConfig::default()
        };
        let state = dir.path().join("state");
        let got = init(&cfg, &state).unwrap();
        assert!(!got.created);
        assert_eq!(got.shown.kind, IdentityKind::Configured);
        assert!(
            !state.join("tls").exists(),
            "nothing generated for a configured cert"
        );

        import(&TlsConfig::default(), &state, &cert, &key).unwrap();
        let got = init(&TlsConfig::default(), &state).unwrap();
        assert!(!got.created);
        assert_eq!(got.shown.kind, IdentityKind::Imported);
        assert!(
            !state.join("tls/ca.key").exists(),
            "no CA made next to an import"
        );
    }

    #[test]
    fn rotate_changes_the_fingerprint_and_keeps_the_ca() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tls = generated(dir.path());
        let before = show(&TlsConfig::default(), dir.path()).unwrap();
        let ca = (
            std::fs::read(tls.join("ca.pem")).unwrap(),
            std::fs::read(tls.join("ca.key")).unwrap(),
        );
        let old_key = std::fs::read(tls.join("server.key")).unwrap();
        let after = rotate(&TlsConfig::default(), dir.path()).unwrap();
        assert_ne!(after.fingerprint, before.fingerprint);
        assert_ne!(old_key, std::fs::read(tls.join("server.key")).unwrap());
        assert_eq!(ca.0, std::fs::read(tls.join("ca.pem")).unwrap());
        assert_eq!(ca.1, std::fs::read(tls.join("ca.key")).unwrap());
        let mode = std::fs::metadata(tls.join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!tls.join("server.key.tmp").exists() && !tls.join("server.pem.tmp").exists());
        // The new certificate chains to the unchanged CA for the same names.
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            r.add(read_certs(&tls.join("ca.pem")).unwrap().remove(0))
                .unwrap();
            std::sync::Arc::new(r)
        };
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots,
            super::super::provider(),
        )
        .build()
        .unwrap();
        let leaf = read_certs(&tls.join("server.pem")).unwrap().remove(0);
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        // The daemon's view (load) keeps the rotated pair.
        let server = super::super::TlsServer::new(&TlsConfig::default(), dir.path()).unwrap();
        assert_eq!(server.identity().fingerprint, after.fingerprint);
    }

    #[test]
    fn rotate_without_an_identity_or_with_a_configured_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = rotate(&TlsConfig::default(), dir.path()).unwrap_err();
        assert!(matches!(e, TlsError::Missing { .. }), "{e}");
        assert!(!dir.path().join("tls").exists());
        let cfg = TlsConfig {
            cert: Some(dir.path().join("c.pem")),
            key: Some(dir.path().join("k.pem")),
            ..TlsConfig::default()
        };
        expect_err(rotate(&cfg, dir.path()), &["configured"]);
        let (c, k) = self_signed(now(), 10);
        expect_err(
            import(
                &cfg,
                dir.path(),
                &write(dir.path(), "x.pem", &c),
                &write(dir.path(), "x.key", &k),
            ),
            &["tls.cert"],
        );
    }

    #[test]
    fn import_of_a_mismatched_key_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tls = generated(dir.path());
        let before = snapshot(&tls);
        let (cert, _) = self_signed(now(), 30);
        let (_, other_key) = self_signed(now(), 30);
        let c = write(dir.path(), "c.pem", &cert);
        let k = write(dir.path(), "other.key", &other_key);
        expect_err(
            import(&TlsConfig::default(), dir.path(), &c, &k),
            &["is not the private key of", "other.key"],
        );
        assert_eq!(before, snapshot(&tls));
        // Garbage for either file is refused the same way.
        for (c, k) in [(&k, &k), (&c, &c)] {
            assert!(import(&TlsConfig::default(), dir.path(), c, k).is_err());
        }
        assert_eq!(before, snapshot(&tls));
    }

    #[test]
    fn import_of_an_expired_or_future_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tls = generated(dir.path());
        let before = snapshot(&tls);
        let (cert, key) = self_signed(now() - time::Duration::days(40), 30);
        let c = write(dir.path(), "old.pem", &cert);
        let k = write(dir.path(), "old.key", &key);
        expect_err(
            import(&TlsConfig::default(), dir.path(), &c, &k),
            &["expired on"],
        );
        let (cert, key) = self_signed(now() + time::Duration::days(2), 30);
        let c = write(dir.path(), "new.pem", &cert);
        let k = write(dir.path(), "new.key", &key);
        expect_err(
            import(&TlsConfig::default(), dir.path(), &c, &k),
            &["not valid before"],
        );
        assert_eq!(before, snapshot(&tls));
    }

    #[test]
    fn import_replaces_the_identity_and_is_never_renewed_or_rotated() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tls = generated(dir.path());
        // 10 days left: a generated certificate would be renewed at the next start.
        let (cert, key) = self_signed(now() - time::Duration::days(1), 11);
        let c = write(dir.path(), "c.pem", &cert);
        let k = write(dir.path(), "k.pem", &key);
        let s = import(&TlsConfig::default(), dir.path(), &c, &k).unwrap();
        assert_eq!(s.kind, IdentityKind::Imported);
        assert_eq!(s.ca_path, None);
        assert_eq!(
            s.fingerprint,
            fingerprint(&read_certs(&c).unwrap().remove(0))
        );
        assert_eq!(
            std::fs::read(tls.join("server.pem")).unwrap(),
            cert.as_bytes()
        );
        let mode = std::fs::metadata(tls.join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Start / reload keep it; rotation is refused and changes nothing.
        let server = super::super::TlsServer::new(&TlsConfig::default(), dir.path()).unwrap();
        assert_eq!(server.identity().fingerprint, s.fingerprint);
        assert_eq!(server.identity().kind, IdentityKind::Imported);
        assert_eq!(server.reload().unwrap().fingerprint, s.fingerprint);
        let before = snapshot(&tls);
        expect_err(rotate(&TlsConfig::default(), dir.path()), &["imported"]);
        assert!(server.rotate().is_err());
        assert_eq!(before, snapshot(&tls));
        // Back to the local CA: delete the marker, rotate.
        std::fs::remove_file(tls.join(IMPORTED_MARKER)).unwrap();
        let back = rotate(&TlsConfig::default(), dir.path()).unwrap();
        assert_eq!(back.kind, IdentityKind::Generated);
        assert_eq!(back.info.issuer, "CN=edgeseek local CA, O=edgeseek");
    }

    #[test]
    fn import_into_an_empty_state_dir_needs_no_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(now(), 30);
        let c = write(dir.path(), "c.pem", &cert);
        let k = write(dir.path(), "k.pem", &key);
        import(&TlsConfig::default(), dir.path(), &c, &k).unwrap();
        let server = super::super::TlsServer::new(&TlsConfig::default(), dir.path()).unwrap();
        assert_eq!(server.identity().kind, IdentityKind::Imported);
        assert!(!dir.path().join("tls/ca.key").exists());
    }

    #[test]
    fn a_chain_out_of_order_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, ka) = self_signed_named("leaf", now(), 30);
        let (b, _) = self_signed_named("somebody else", now(), 30);
        let c = write(dir.path(), "c.pem", &format!("{a}{b}"));
        let k = write(dir.path(), "k.pem", &ka);
        expect_err(
            import(&TlsConfig::default(), dir.path(), &c, &k),
            &["not issued by certificate 2"],
        );
        assert!(!dir.path().join("tls").exists());
    }

    #[test]
    fn cert_info_parses_names_and_validity() {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![
            "edge-01.local".into(),
            "::1".into(),
            "10.0.0.7".into(),
        ])
        .unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "édge");
        dn.push(rcgen::DnType::OrganizationName, "Acme");
        p.distinguished_name = dn;
        p.not_before = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        p.not_after = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let cert = p.self_signed(&key).unwrap();
        let info = CertInfo::parse(cert.der()).unwrap();
        assert_eq!(info.subject, "CN=édge, O=Acme");
        assert_eq!(info.issuer, info.subject);
        assert_eq!(info.sans, vec!["edge-01.local", "::1", "10.0.0.7"]);
        assert_eq!(
            (info.not_before, info.not_after),
            (1_700_000_000, 1_800_000_000)
        );
        assert_eq!(
            dotted_oid(&[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37]),
            "1.3.6.1.4.1.311"
        );
        assert_eq!(CertInfo::parse(b"\x30\x00"), None);
    }
}
