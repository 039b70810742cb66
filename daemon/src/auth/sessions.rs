//! Console sessions opened by a directory sign-in, in memory.
//!
//! A session id is 32 random bytes from the OS (hex in the cookie); only its SHA-256 is kept,
//! so a memory dump or a debug print of the map yields nothing a browser could send. As with
//! API keys, a fast hash is right for a 256-bit random secret. The CSRF token is a second,
//! independent random value that page scripts may read (the cookie they cannot).

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::keys::{KeyInfo, Scope};
use crate::util::{hex, lock};

/// Sessions kept at most: a new one past this evicts the one closest to expiry, so sign-ins
/// cannot grow memory without bound.
const MAX_SESSIONS: usize = 10_000;

/// What a sign-in established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The name the user signed in with (as the directory spells it when it says).
    pub user: String,
    /// The user's entry as found at sign-in (re-checks search by name again, so an entry
    /// that moved or was replaced is judged as the directory has it then).
    pub dn: String,
    pub scopes: Vec<Scope>,
    pub group: Option<String>,
    /// Unix seconds when the session ends, whatever happens before.
    pub expires_at: u64,
    /// Unix seconds of the last directory check (the sign-in itself, then each re-check).
    pub checked_at: u64,
    pub csrf: String,
}

impl Session {
    /// The principal the gate authenticates: what a key of the same scopes and group would be.
    pub fn key_info(&self) -> KeyInfo {
        KeyInfo {
            id: format!("user:{}", self.user),
            name: self.user.clone(),
            scopes: self.scopes.clone(),
            rpm: None,
            tpm: None,
            group: self.group.clone(),
            quota: crate::usage::Quota::default(),
        }
    }
}

#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// 32 random bytes from the OS, hex.
pub fn random_token() -> Result<String, String> {
    use rand::TryRngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| format!("no randomness from the operating system: {e}"))?;
    Ok(hex(&b))
}

impl Sessions {
    /// Keep `s`; the session id for the cookie.
    pub fn open(&self, s: Session, now: u64) -> Result<String, String> {
        let id = random_token()?;
        let mut m = lock(&self.by_hash);
        m.retain(|_, v| v.expires_at > now);
        if m.len() >= MAX_SESSIONS {
            if let Some(k) = m.iter().min_by_key(|(_, v)| v.expires_at).map(|(k, _)| *k) {
                m.remove(&k);
            }
        }
        m.insert(digest(&id), s);
        Ok(id)
    }

    /// The live session of cookie value `id`; an expired one is removed and not returned.
    pub fn get(&self, id: &str, now: u64) -> Option<Session> {
        let h = digest(id);
        let mut m = lock(&self.by_hash);
        match m.get(&h) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                m.remove(&h);
                None
            }
            None => None,
        }
    }

    /// After a re-check found the account still allowed: its scopes and group as the
    /// directory says now.
    pub fn refresh(&self, id: &str, scopes: Vec<Scope>, group: Option<String>, now: u64) {
        if let Some(s) = lock(&self.by_hash).get_mut(&digest(id)) {
            s.scopes = scopes;
            s.group = group;
            s.checked_at = now;
        }
    }

    /// A re-check that could not reach the directory: try again after the next interval
    /// instead of on every request.
    pub fn postpone(&self, id: &str, now: u64) {
        if let Some(s) = lock(&self.by_hash).get_mut(&digest(id)) {
            s.checked_at = now;
        }
    }

    /// Sign out (logout, or an account the directory no longer allows).
    pub fn close(&self, id: &str) -> bool {
        lock(&self.by_hash).remove(&digest(id)).is_some()
    }

    pub fn len(&self) -> usize {
        lock(&self.by_hash).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`).
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Compare secrets without an early exit on the first differing byte.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(expires_at: u64) -> Session {
        Session {
            user: "alice".into(),
            dn: "uid=alice,ou=people,dc=example".into(),
            scopes: vec![Scope::Chat],
            group: Some("finance".into()),
            expires_at,
            checked_at: 0,
            csrf: "c".into(),
        }
    }

    #[test]
    fn sessions_expire_and_close() {
        let s = Sessions::default();
        let id = s.open(session(100), 10).unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(s.get(&id, 99).unwrap().user, "alice");
        assert!(s.get("not-a-session", 10).is_none());
        // At its expiry it is gone, and stays gone.
        assert!(s.get(&id, 100).is_none());
        assert!(s.is_empty());
        let id = s.open(session(100), 10).unwrap();
        assert!(s.close(&id));
        assert!(s.get(&id, 11).is_none());
        assert!(!s.close(&id));
    }

    #[test]
    fn refresh_updates_scopes_and_check_time() {
        let s = Sessions::default();
        let id = s.open(session(100), 10).unwrap();
        s.refresh(&id, vec![Scope::Admin], None, 50);
        let got = s.get(&id, 51).unwrap();
        assert_eq!(
            (got.scopes, got.group, got.checked_at),
            (vec![Scope::Admin], None, 50)
        );
    }

    #[test]
    fn principal_looks_like_a_key() {
        let k = session(100).key_info();
        assert_eq!(k.id, "user:alice");
        assert_eq!(k.group.as_deref(), Some("finance"));
        assert!(k.allows(&Scope::Chat) && !k.allows(&Scope::Admin));
    }

    #[test]
    fn cookie_parsing_and_secret_compare() {
        let h = "theme=dark; edgeseek_session=abc123 ; other=\"x\"";
        assert_eq!(cookie(h, "edgeseek_session"), Some("abc123"));
        assert_eq!(cookie(h, "other"), Some("x"));
        assert_eq!(cookie(h, "edgeseek"), None);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd") && !same_secret("abc", "ab"));
    }
}
