//! Scopes: what a key may do, their text form, and whether a key's scopes cover a need.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::kb::valid_collection;

use super::{KeyError, KeyInfo};

/// What a key may do. Text form: `chat`, `embeddings`, `kb:read:COLLECTION`,
/// `kb:write:COLLECTION`, `admin`; COLLECTION may be `*` (every collection).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Chat,
    Embeddings,
    KbRead(String),
    KbWrite(String),
    /// May chat with this agent (`model: "agent:NAME"`); `*` covers every agent.
    Agent(String),
    /// May search the web (the `web_search` chat extension, web tools inside agents).
    Web,
    Admin,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Chat => f.write_str("chat"),
            Scope::Embeddings => f.write_str("embeddings"),
            Scope::KbRead(c) => write!(f, "kb:read:{c}"),
            Scope::KbWrite(c) => write!(f, "kb:write:{c}"),
            Scope::Agent(a) => write!(f, "agent:{a}"),
            Scope::Web => f.write_str("web"),
            Scope::Admin => f.write_str("admin"),
        }
    }
}

impl FromStr for Scope {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Scope, KeyError> {
        let bad = |why| KeyError::InvalidScope {
            scope: s.to_string(),
            why,
        };
        let collection = |c: &str| -> Result<String, KeyError> {
            if c == "*" || valid_collection(c) {
                Ok(c.to_string())
            } else {
                Err(bad(
                    "collection must be `*` or 1-64 letters, digits, `-`, `_`, `.`",
                ))
            }
        };
        match s {
            "chat" => Ok(Scope::Chat),
            "embeddings" => Ok(Scope::Embeddings),
            "admin" => Ok(Scope::Admin),
            "web" => Ok(Scope::Web),
            _ => {
                if let Some(c) = s.strip_prefix("kb:read:") {
                    Ok(Scope::KbRead(collection(c)?))
                } else if let Some(c) = s.strip_prefix("kb:write:") {
                    Ok(Scope::KbWrite(collection(c)?))
                } else if let Some(a) = s.strip_prefix("agent:") {
                    if a == "*" || crate::agents::valid_name(a) {
                        Ok(Scope::Agent(a.to_string()))
                    } else {
                        Err(bad(
                            "agent must be `*` or 1-64 letters, digits, `-`, `_`, `.`",
                        ))
                    }
                } else {
                    Err(bad("expected chat, embeddings, web, kb:read:COLLECTION, kb:write:COLLECTION, agent:NAME or admin"))
                }
            }
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scope, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parse a comma-separated scope list (`chat,kb:read:docs`); empty items are ignored,
/// duplicates dropped, and at least one scope is required.
pub fn parse_scopes(list: &str) -> Result<Vec<Scope>, KeyError> {
    let mut out: Vec<Scope> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let s: Scope = item.parse()?;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    if out.is_empty() {
        return Err(KeyError::Invalid("a key needs at least one scope"));
    }
    Ok(out)
}

impl KeyInfo {
    /// Whether the key's scopes cover `needed`: `admin` covers everything, a `*` collection
    /// covers every collection, and `kb:write:C` implies `kb:read:C`.
    pub fn allows(&self, needed: &Scope) -> bool {
        let covers = |granted: &str, wanted: &str| granted == "*" || granted == wanted;
        self.scopes.iter().any(|g| match (g, needed) {
            (Scope::Admin, _) => true,
            (Scope::Chat, Scope::Chat) | (Scope::Embeddings, Scope::Embeddings) => true,
            (Scope::KbRead(g) | Scope::KbWrite(g), Scope::KbRead(w)) => covers(g, w),
            (Scope::KbWrite(g), Scope::KbWrite(w)) => covers(g, w),
            (Scope::Agent(g), Scope::Agent(w)) => covers(g, w),
            (Scope::Web, Scope::Web) => true,
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::scopes;
    use super::*;

    fn info(sc: &str) -> KeyInfo {
        KeyInfo {
            id: "k".into(),
            name: "n".into(),
            scopes: scopes(sc),
            rpm: None,
            tpm: None,
            group: None,
            quota: Default::default(),
        }
    }

    #[test]
    fn scope_text_round_trips() {
        for s in [
            "chat",
            "embeddings",
            "admin",
            "kb:read:docs",
            "kb:write:*",
            "kb:read:规章制度",
            "agent:helpdesk",
            "agent:*",
            "web",
        ] {
            assert_eq!(s.parse::<Scope>().unwrap().to_string(), s);
        }
        for bad in [
            "",
            "chat2",
            "kb:read:",
            "kb:read",
            "kb:delete:x",
            "kb:read:a b",
            "agent:",
            "agent:a b",
            "web:x",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
        assert_eq!(
            parse_scopes("chat, embeddings,chat").unwrap(),
            vec![Scope::Chat, Scope::Embeddings]
        );
        assert!(parse_scopes(" , ").is_err());
        let json = serde_json::to_string(&scopes("chat,kb:read:x")).unwrap();
        assert_eq!(json, r#"["chat","kb:read:x"]"#);
    }

    #[test]
    fn scope_matching() {
        let k = info("chat,kb:read:docs,kb:write:hr");
        assert!(k.allows(&Scope::Chat));
        assert!(!k.allows(&Scope::Embeddings));
        assert!(!k.allows(&Scope::Admin));
        assert!(k.allows(&Scope::KbRead("docs".into())));
        assert!(!k.allows(&Scope::KbWrite("docs".into())));
        assert!(!k.allows(&Scope::KbRead("other".into())));
        // write implies read of the same collection, not of others
        assert!(k.allows(&Scope::KbRead("hr".into())));
        assert!(k.allows(&Scope::KbWrite("hr".into())));
        // a concrete grant does not cover "every collection"
        assert!(!k.allows(&Scope::KbRead("*".into())));

        let w = info("kb:read:*");
        assert!(w.allows(&Scope::KbRead("anything".into())));
        assert!(w.allows(&Scope::KbRead("*".into())));
        assert!(!w.allows(&Scope::KbWrite("anything".into())));
        assert!(!w.allows(&Scope::Chat));

        let ww = info("kb:write:*");
        assert!(ww.allows(&Scope::KbRead("x".into())) && ww.allows(&Scope::KbWrite("y".into())));

        let ag = info("agent:helpdesk,web");
        assert!(ag.allows(&Scope::Agent("helpdesk".into())) && ag.allows(&Scope::Web));
        assert!(!ag.allows(&Scope::Agent("hr".into())) && !ag.allows(&Scope::Chat));
        assert!(!ag.allows(&Scope::Agent("*".into())));
        assert!(info("agent:*").allows(&Scope::Agent("hr".into())));
        assert!(!info("chat").allows(&Scope::Web));

        let a = info("admin");
        for s in [
            "chat",
            "embeddings",
            "admin",
            "kb:write:x",
            "kb:read:*",
            "agent:x",
            "web",
        ] {
            assert!(a.allows(&s.parse().unwrap()), "{s}");
        }
    }
}
