//! Console sign-in through the company directory: `[auth.ldap]` (its schema and validation),
//! the directory client ([`ldap`]), the sessions a sign-in opens ([`sessions`]) and the
//! limiter of sign-in attempts ([`attempts`]).
//!
//! A session is a principal like an API key (id `user:NAME`, the scopes and usage group its
//! directory groups map to), so scope checks, quotas, usage counting and the audit log treat
//! both alike. Sessions live in memory only: a restart signs everyone out, which is also what
//! makes a changed group mapping take effect for everyone at once.

pub mod attempts;
pub mod ldap;
pub mod sessions;

pub use attempts::Attempts;
pub use ldap::{Directory, LdapConfig, LdapError};
pub use sessions::{Session, Sessions};

/// `[auth]`: how staff sign in to the console besides pasting an API key.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `[auth.ldap]`: the company directory (LDAP / Active Directory). Absent: off.
    pub ldap: Option<LdapConfig>,
}

impl AuthConfig {
    /// `(key, message)` of the first setting that is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match &self.ldap {
            Some(l) => l.validate(),
            None => Ok(()),
        }
    }
}
