//! The TLS identity: present, readable, matching key, not expired or about to.

use std::time::SystemTime;

use super::{Check, Ctx};

pub(super) fn check_tls(ctx: &Ctx) -> Check {
    use crate::tls::{IdentityKind, TlsError, RENEW_BEFORE_DAYS};
    const NAME: &str = "tls";
    let shown = match crate::tls::manage::show(&ctx.config.tls, &ctx.state_dir) {
        Ok(s) => s,
        Err(TlsError::Missing { dir }) => {
            return Check::warn(
                NAME,
                format!("no TLS identity in {} yet", dir.display()),
                "edgeseek tls init (first boot runs it; so does the first start)",
            )
        }
        Err(TlsError::Io { path, source })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            return Check::warn(
                NAME,
                format!("cannot read {}: {source}", path.display()),
                "run edgeseek doctor as root",
            )
        }
        Err(e) => {
            return Check::fail(
                NAME,
                e.to_string(),
                "edgeseek tls import CERT KEY, or fix tls.cert / tls.key",
            )
        }
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let info = &shown.info;
    let what = format!(
        "{} certificate sha256 {}…, valid until {}",
        shown.kind.as_str(),
        &shown.fingerprint[..shown.fingerprint.len().min(23)],
        crate::tls::utc_string(info.not_after)
    );
    if info.not_before > now {
        return Check::fail(
            NAME,
            format!(
                "{what}: not valid before {} — the clock is behind or the certificate is from the future; clients refuse it",
                crate::tls::utc_string(info.not_before)
            ),
            "fix the clock (see `clock`), then `edgeseek tls rotate` if it was issued with a wrong clock",
        );
    }
    let renew = match shown.kind {
        IdentityKind::Generated => "edgeseek tls rotate (or restart: renewed automatically)",
        _ => "edgeseek tls import a new certificate (edgeseek never renews an imported or configured one)",
    };
    if info.not_after < now {
        return Check::fail(NAME, format!("{what}: EXPIRED"), renew);
    }
    if let Err(e) = crate::tls::manage::check_key(&shown) {
        return Check::fail(NAME, e.to_string(), renew);
    }
    let days = shown.days_left(now);
    if days < RENEW_BEFORE_DAYS {
        return Check::warn(NAME, format!("{what}: {days} days left"), renew);
    }
    Check::ok(NAME, format!("{what} ({days} days)"))
}
