//! The generated identity: a local CA and a server certificate signed by it, created and
//! renewed under `<state_dir>/tls/`, with keys written 0600 before any byte of them.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use super::*;

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

pub(super) fn is_dns_name(s: &str) -> bool {
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
pub(super) fn ensure_generated(
    dir: &Path,
    now: OffsetDateTime,
    names: &[String],
) -> Result<(), TlsError> {
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

pub(super) fn read_ca_key(path: &Path) -> Result<KeyPair, TlsError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    KeyPair::from_pem(&text).map_err(|e| invalid(path, e))
}

/// `key_path` parses and holds the private key of the leaf in `cert_path`.
pub(super) fn pair_matches(cert_path: &Path, key_path: &Path) -> bool {
    let (Ok(chain), Ok(key)) = (read_certs(cert_path), read_key(key_path)) else {
        return false;
    };
    certified_key(chain, key).is_ok()
}

/// The chain and key as rustls serves them, refusing a key that does not belong to the leaf
/// (or whose public key cannot be compared).
pub(super) fn certified_key(
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
pub(super) fn issue_server(
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
pub(super) fn replace_pair(dir: &Path, key_pem: &[u8], cert_pem: &[u8]) -> Result<(), TlsError> {
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

pub(super) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

pub(super) fn ca_params(now: OffsetDateTime) -> CertificateParams {
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

pub(super) fn server_params(
    now: OffsetDateTime,
    names: &[String],
) -> Result<CertificateParams, TlsError> {
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
pub(super) fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
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
pub(super) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = stage_file(path, bytes, mode)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

/// Write `bytes` to `<path>.tmp` (created with `mode`, synced) and return that path. When root
/// writes (`sudo edgeseek tls rotate`), the file is given to the owner of the directory, so a
/// daemon running as the service user can still read its key.
pub(super) fn stage_file(path: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf, TlsError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
