//! The company directory (LDAP / Active Directory): `[auth.ldap]` and the client that checks
//! a user's password and reads their groups.
//!
//! Sign-in is the usual search-then-bind: bind as the service account, find the user's entry
//! with `user_filter` (exactly one), then bind as that entry with the password given. A
//! re-check repeats the search only, so an account the filter no longer finds — deleted, or
//! disabled where the filter excludes disabled accounts, as the AD example does — loses its
//! session at the next re-check.
//!
//! Every connection is new (sign-ins and re-checks are rare next to API calls) and is TLS
//! unless the directory is on this machine: `ldaps://`, or `ldap://` with StartTLS.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, SearchEntry, SearchOptions};
use serde::Deserialize;

use crate::keys::Scope;

/// `[auth.ldap]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldaps://host:636`, or `ldap://host:389` with `starttls = true`. Plain `ldap://`
    /// without StartTLS only to a loopback address (passwords must not cross the LAN bare).
    pub url: String,
    #[serde(default)]
    pub starttls: bool,
    /// PEM file of the CA(s) that signed the directory's certificate; absent: the system's
    /// trust store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The service account that searches for users.
    pub bind_dn: String,
    /// File holding the service account's password (kept out of the config file, which is
    /// world-readable on many systems); a trailing newline is ignored.
    pub bind_password_file: PathBuf,
    /// Where users are searched (whole subtree).
    pub user_base: String,
    /// Filter that finds one user; `{user}` is replaced by the name typed, escaped per
    /// RFC 4515.
    #[serde(default = "default_filter")]
    pub user_filter: String,
    /// Attribute of the user's entry that lists the DNs of their groups.
    #[serde(default = "default_group_attribute")]
    pub group_attribute: String,
    /// How long a session lasts at most, hours.
    #[serde(default = "default_session_hours")]
    pub session_hours: u64,
    /// How often a session is re-checked against the directory, seconds.
    #[serde(default = "default_recheck")]
    pub recheck_seconds: u64,
    /// Limit on connecting and on each directory operation, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Directory group DN → what its members may do. A user in none of these cannot sign in.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupMapping>,
}

/// `[auth.ldap.groups."cn=…"]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMapping {
    /// The same scope strings API keys carry (`chat`, `kb:read:finance`, `admin`, …).
    #[serde(default)]
    pub scopes: Vec<Scope>,
    /// The usage group (department) the members' calls are counted in.
    #[serde(default)]
    pub usage_group: Option<String>,
}

fn default_filter() -> String {
    "(uid={user})".into()
}
fn default_group_attribute() -> String {
    "memberOf".into()
}
fn default_session_hours() -> u64 {
    8
}
fn default_recheck() -> u64 {
    300
}
fn default_timeout() -> u64 {
    5
}

impl LdapConfig {
    /// `(key, message)` of the first wrong setting.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("auth.ldap.{k}"), m.to_string()));
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return bad("url", "must be ldaps://HOST[:PORT] or ldap://HOST[:PORT]");
        };
        let host = host_of(rest);
        if host.is_empty() {
            return bad("url", "names no host");
        }
        match scheme.to_ascii_lowercase().as_str() {
            "ldaps" if self.starttls => {
                return bad("starttls", "is for ldap:// URLs (ldaps:// is TLS already)")
            }
            "ldaps" => {}
            "ldap" if self.starttls || is_loopback_host(host) => {}
            "ldap" => {
                return bad(
                    "url",
                    "ldap:// without TLS would send passwords in clear text: use ldaps:// or \
                     set starttls = true (plain ldap:// is accepted only on a loopback address)",
                )
            }
            _ => return bad("url", "must start with ldaps:// or ldap://"),
        }
        if self.bind_dn.trim().is_empty() {
            return bad("bind_dn", "must name the service account");
        }
        if self.user_base.trim().is_empty() {
            return bad("user_base", "must name where users are searched");
        }
        if !self.user_filter.contains("{user}")
            || !self.user_filter.starts_with('(')
            || !self.user_filter.ends_with(')')
        {
            return bad(
                "user_filter",
                "must be an LDAP filter in parentheses containing {user}",
            );
        }
        if self.group_attribute.trim().is_empty() {
            return bad("group_attribute", "must name an attribute");
        }
        if !(1..=24 * 30).contains(&self.session_hours) {
            return bad("session_hours", "must be 1..=720");
        }
        if !(1..=86_400).contains(&self.recheck_seconds) {
            return bad("recheck_seconds", "must be 1..=86400");
        }
        if !(1..=120).contains(&self.timeout_s) {
            return bad("timeout_s", "must be 1..=120");
        }
        if self.groups.is_empty() {
            return bad(
                "groups",
                "map at least one directory group to scopes ([auth.ldap.groups.\"cn=…\"])",
            );
        }
        for (dn, g) in &self.groups {
            if g.scopes.is_empty() {
                return bad(
                    &format!("groups.\"{dn}\".scopes"),
                    "must grant at least one scope",
                );
            }
            if let Some(u) = &g.usage_group {
                if !crate::usage::valid_group(u) {
                    return bad(
                        &format!("groups.\"{dn}\".usage_group"),
                        "a group name is 1-64 lowercase letters, digits, '-' or '_'",
                    );
                }
            }
        }
        Ok(())
    }
}

/// The host of `host[:port][/…]` (IPv6 in brackets).
fn host_of(rest: &str) -> &str {
    let hostport = rest.split('/').next().unwrap_or("");
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    hostport.split(':').next().unwrap_or("")
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `value` escaped for an LDAP filter (RFC 4515 §3): `*`, `(`, `)`, `\` and NUL as `\XX`,
/// so a typed name can only ever be a literal value, never filter syntax.
pub fn escape_filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '*' | '(' | ')' | '\\' | '\0' => out.push_str(&format!("\\{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A group DN for comparison: case and the spaces around `,` and `=` do not matter.
fn normalize_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| rdn.split('=').map(str::trim).collect::<Vec<_>>().join("="))
        .collect::<Vec<_>>()
        .join(",")
        .to_lowercase()
}

#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    /// Unknown user, wrong password, or a name that matches several entries: one message
    /// for all, so the answer does not tell which names exist.
    #[error("incorrect username or password")]
    BadCredentials,
    #[error("the directory is not reachable or refused the service account: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Setup(String),
}

/// A user the directory vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub dn: String,
    /// DNs of the user's groups, as the directory lists them.
    pub groups: Vec<String>,
}

/// What a user's groups grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub scopes: Vec<Scope>,
    pub group: Option<String>,
}

/// The directory client, built from `[auth.ldap]` (at start and on reload).
pub struct Directory {
    pub cfg: LdapConfig,
    bind_password: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    groups: Vec<(String, GroupMapping)>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("url", &self.cfg.url)
            .finish_non_exhaustive()
    }
}

impl Directory {
    /// Read the service password and the CA file; the config is validated already.
    pub fn new(cfg: &LdapConfig) -> Result<Directory, LdapError> {
        let pw = std::fs::read_to_string(&cfg.bind_password_file).map_err(|e| {
            LdapError::Setup(format!(
                "auth.ldap.bind_password_file {}: {e}",
                cfg.bind_password_file.display()
            ))
        })?;
        let bind_password = pw.trim_end_matches(['\r', '\n']).to_string();
        if bind_password.is_empty() {
            // An empty password is an unauthenticated bind, which servers accept as
            // anonymous: never what the administrator meant.
            return Err(LdapError::Setup(format!(
                "auth.ldap.bind_password_file {} is empty",
                cfg.bind_password_file.display()
            )));
        }
        let uses_tls = cfg.url.to_ascii_lowercase().starts_with("ldaps://") || cfg.starttls;
        let tls = if uses_tls {
            Some(Arc::new(tls_config(cfg)?))
        } else {
            None
        };
        Ok(Directory {
            groups: cfg
                .groups
                .iter()
                .map(|(dn, g)| (normalize_dn(dn), g.clone()))
                .collect(),
            cfg: cfg.clone(),
            bind_password,
            tls,
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.timeout_s)
    }

    async fn connect(&self) -> Result<ldap3::Ldap, LdapError> {
        let mut settings = LdapConnSettings::new().set_conn_timeout(self.timeout());
        if let Some(tls) = &self.tls {
            settings = settings
                .set_config(tls.clone())
                .set_starttls(self.cfg.starttls);
        }
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.cfg.url)
            .await
            .map_err(|e| LdapError::Unavailable(format!("connecting to {}: {e}", self.cfg.url)))?;
        ldap3::drive!(conn);
        Ok(ldap)
    }

    /// `op` within the operation timeout.
    async fn timed<T>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = ldap3::result::Result<T>>,
    ) -> Result<T, LdapError> {
        match tokio::time::timeout(self.timeout(), op).await {
            Ok(r) => r.map_err(|e| LdapError::Unavailable(format!("{what}: {e}"))),
            Err(_) => Err(LdapError::Unavailable(format!(
                "{what}: no answer in {} s",
                self.cfg.timeout_s
            ))),
        }
    }

    /// The user's entry by `user_filter`, on a connection bound as the service account;
    /// `None` when the filter finds no entry or several.
    async fn find(&self, ldap: &mut ldap3::Ldap, user: &str) -> Result<Option<Account>, LdapError> {
        let bound = self
            .timed(
                "service bind",
                ldap.simple_bind(&self.cfg.bind_dn, &self.bind_password),
            )
            .await?;
        if bound.rc != 0 {
            return Err(LdapError::Unavailable(format!(
                "service bind as {} refused: {bound}",
                self.cfg.bind_dn
            )));
        }
        let filter = self
            .cfg
            .user_filter
            .replace("{user}", &escape_filter_value(user));
        let attrs = vec![self.cfg.group_attribute.as_str()];
        // Two are enough to tell "exactly one" from "several".
        ldap.with_search_options(SearchOptions::new().sizelimit(2));
        let ldap3::SearchResult(entries, res) = self
            .timed(
                "user search",
                ldap.search(&self.cfg.user_base, ldap3::Scope::Subtree, &filter, attrs),
            )
            .await?;
        // 0: done; 4: size limit exceeded (several entries); 32: no such base.
        if ![0, 4, 32].contains(&res.rc) {
            return Err(LdapError::Unavailable(format!("user search: {res}")));
        }
        if entries.len() != 1 {
            if entries.len() > 1 {
                tracing::warn!(
                    filter = %self.cfg.user_filter,
                    "auth.ldap.user_filter matches several entries for one name; refused"
                );
            }
            return Ok(None);
        }
        let Some(entry) = entries.into_iter().next() else {
            return Ok(None);
        };
        let e = SearchEntry::construct(entry);
        let groups = e
            .attrs
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(&self.cfg.group_attribute))
            .flat_map(|(_, v)| v.iter().cloned())
            .collect();
        Ok(Some(Account { dn: e.dn, groups }))
    }

    /// Check `password` for `user`: the account and its groups, or why not.
    pub async fn sign_in(&self, user: &str, password: &str) -> Result<Account, LdapError> {
        // An empty password would be an unauthenticated bind, which directories answer
        // with success: it must never sign anyone in.
        if password.is_empty() {
            return Err(LdapError::BadCredentials);
        }
        let mut ldap = self.connect().await?;
        let found = self.find(&mut ldap, user).await;
        let account = match found {
            Ok(Some(a)) => a,
            Ok(None) => {
                // A bind that must fail, so an unknown name costs the same round trip as a
                // wrong password: the answer's timing does not tell which names exist.
                let absent = format!("cn=edgeseek-no-such-user,{}", self.cfg.user_base);
                let _ = self
                    .timed("user bind", ldap.simple_bind(&absent, password))
                    .await;
                let _ = ldap.unbind().await;
                return Err(LdapError::BadCredentials);
            }
            Err(e) => {
                let _ = ldap.unbind().await;
                return Err(e);
            }
        };
        let bound = self
            .timed("user bind", ldap.simple_bind(&account.dn, password))
            .await;
        let _ = ldap.unbind().await;
        match bound?.rc {
            0 => Ok(account),
            // invalidCredentials, inappropriateAuthentication, insufficientAccessRights,
            // unwillingToPerform (AD: disabled, locked, expired): refused, not an outage.
            49 | 48 | 50 | 53 => Err(LdapError::BadCredentials),
            rc => Err(LdapError::Unavailable(format!(
                "user bind: result code {rc}"
            ))),
        }
    }

    /// Whether `user` is still found by the filter (and with which groups).
    pub async fn recheck(&self, user: &str) -> Result<Option<Account>, LdapError> {
        let mut ldap = self.connect().await?;
        let found = self.find(&mut ldap, user).await;
        let _ = ldap.unbind().await;
        found
    }

    /// What `groups` grant: the union of the mapped groups' scopes, and the usage group of
    /// the first mapped group (in DN order) that names one; `None` when none is mapped.
    pub fn grant(&self, groups: &[String]) -> Option<Grant> {
        let mine: Vec<String> = groups.iter().map(|g| normalize_dn(g)).collect();
        let mut scopes: Vec<Scope> = Vec::new();
        let mut group = None;
        let mut any = false;
        for (dn, m) in &self.groups {
            if !mine.contains(dn) {
                continue;
            }
            any = true;
            for s in &m.scopes {
                if !scopes.contains(s) {
                    scopes.push(s.clone());
                }
            }
            if group.is_none() {
                group.clone_from(&m.usage_group);
            }
        }
        any.then_some(Grant { scopes, group })
    }
}

/// rustls (ring) trusting `ca_file`, else the system's trust store.
fn tls_config(cfg: &LdapConfig) -> Result<rustls::ClientConfig, LdapError> {
    let Some(ca) = &cfg.ca_file else {
        return crate::web::tls::client_config().map_err(LdapError::Setup);
    };
    crate::web::tls::client_config_with_roots(ca)
        .map_err(|m| LdapError::Setup(format!("auth.ldap.ca_file {}: {m}", ca.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Result<LdapConfig, String> {
        let text = format!(
            "url = \"ldaps://dc1.corp.example\"\nbind_dn = \"cn=svc,dc=corp\"\n\
             bind_password_file = \"/etc/edgeseek/ldap.secret\"\nuser_base = \"ou=people,dc=corp\"\n\
             {extra}\n[groups.\"cn=Finance, ou=groups,dc=corp\"]\nscopes = [\"chat\", \"kb:read:finance\"]\n\
             usage_group = \"finance\"\n[groups.\"cn=admins,ou=groups,dc=corp\"]\nscopes = [\"admin\"]\n"
        );
        let c: LdapConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        c.validate().map_err(|(k, m)| format!("{k}: {m}"))?;
        Ok(c)
    }

    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(escape_filter_value("alice"), "alice");
        assert_eq!(escape_filter_value("*"), "\\2a");
        assert_eq!(
            escape_filter_value("a)(uid=*))(|(uid=*"),
            "a\\29\\28uid=\\2a\\29\\29\\28|\\28uid=\\2a"
        );
        assert_eq!(escape_filter_value("back\\slash\0"), "back\\5cslash\\00");
        // Non-ASCII names stay as they are (UTF-8 is valid in a filter value).
        assert_eq!(escape_filter_value("张伟"), "张伟");
    }

    #[test]
    fn defaults_and_validation() {
        let c = cfg("").unwrap();
        assert_eq!(c.user_filter, "(uid={user})");
        assert_eq!(c.group_attribute, "memberOf");
        assert_eq!((c.session_hours, c.recheck_seconds), (8, 300));
        for (extra, want) in [
            ("starttls = true", "auth.ldap.starttls"),
            ("user_filter = \"uid={user}\"", "auth.ldap.user_filter"),
            ("user_filter = \"(uid=alice)\"", "auth.ldap.user_filter"),
            ("session_hours = 0", "auth.ldap.session_hours"),
            ("recheck_seconds = 0", "auth.ldap.recheck_seconds"),
        ] {
            let e = cfg(extra).unwrap_err();
            assert!(e.starts_with(want), "{extra}: {e}");
        }
        assert!(
            cfg("bind_password = \"inline\"").is_err(),
            "no inline secret"
        );
    }

    #[test]
    fn plain_ldap_only_on_loopback() {
        let with_url = |u: &str, starttls: bool| {
            let mut c = cfg("").unwrap();
            c.url = u.into();
            c.starttls = starttls;
            c.validate()
        };
        assert!(with_url("ldap://dc1.corp.example", false).is_err());
        assert!(with_url("ldap://10.0.0.5:389", false).is_err());
        assert!(with_url("ldap://dc1.corp.example", true).is_ok());
        assert!(with_url("ldap://127.0.0.1:3389", false).is_ok());
        assert!(with_url("ldap://[::1]:3389", false).is_ok());
        assert!(with_url("ldap://localhost", false).is_ok());
        assert!(with_url("http://dc1", false).is_err());
        assert!(with_url("ldaps://", false).is_err());
    }

    #[test]
    fn groups_map_to_scopes_and_usage_group() {
        let c = cfg("").unwrap();
        let dir = Directory {
            groups: c
                .groups
                .iter()
                .map(|(dn, g)| (normalize_dn(dn), g.clone()))
                .collect(),
            cfg: c,
            bind_password: "x".into(),
            tls: None,
        };
        let g = dir
            .grant(&["CN=finance,OU=Groups,DC=corp".into(), "cn=other".into()])
            .unwrap();
        assert_eq!(g.scopes, vec![Scope::Chat, Scope::KbRead("finance".into())]);
        assert_eq!(g.group.as_deref(), Some("finance"));
        let both = dir
            .grant(&[
                "cn=admins,ou=groups,dc=corp".into(),
                "cn=finance,ou=groups,dc=corp".into(),
            ])
            .unwrap();
        assert!(both.scopes.contains(&Scope::Admin) && both.scopes.len() == 3);
        assert_eq!(both.group.as_deref(), Some("finance"));
        assert!(dir.grant(&["cn=other".into()]).is_none());
        assert!(dir.grant(&[]).is_none());
    }
}
