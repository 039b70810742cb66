//! Agents: assistants an admin assembles from instructions, a model, tools and knowledge
//! collections, with limits. This module owns their records and validation and keeps them in
//! redb; the API plane runs them (`api::agent`).
//!
//! | table | key | value |
//! |---|---|---|
//! | `agents` | agent name | JSON [`Agent`] (serde defaults let later versions add fields) |
//!
//! Every request that names an agent reads it from an in-memory copy of the table (no redb
//! read on the request path); create, update and delete write the table first and change the
//! copy only after the commit, under one lock, so the copy never shows a state the file does
//! not have.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Deserializer, Serialize};

use crate::store::{Migration, Store, StoreError};
use crate::util::{lock, read, unix_now, write};

/// `agents`: name → JSON [`Agent`].
pub const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");

/// Schema step 3: the agents table.
pub const AGENTS_V3: Migration = Migration::new(3, "agents", migrate_v3);

fn migrate_v3(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(AGENTS)?;
    Ok(())
}

/// An agent is chat model `agent:NAME`.
pub const MODEL_PREFIX: &str = "agent:";

/// The built-in tools, by the name the model sees.
pub const BUILTIN_TOOLS: &[&str] = &["kb_search", "web_search", "fetch_url", "current_time"];

pub const DEFAULT_MAX_STEPS: u32 = 6;
pub const MAX_STEPS: u32 = 16;
const MAX_TOOLS: usize = 64;
const MAX_COLLECTIONS: usize = 16;
const MAX_SITES: usize = 64;
const MAX_DESCRIPTION_CHARS: usize = 1_000;
const MAX_INSTRUCTIONS_CHARS: usize = 32_000;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A field that fails its rule; `field` is the JSON name (the API's `param`).
    #[error("{field}: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("an agent named `{0}` already exists")]
    Exists(String),
    #[error("no agent named `{0}`")]
    NotFound(String),
    #[error("agent record `{name}` is unreadable: {msg}")]
    Corrupt { name: String, msg: String },
}

crate::store::redb_errors_into!(AgentError, AgentError::Store);

fn invalid(field: &'static str, why: impl Into<String>) -> AgentError {
    AgentError::Invalid {
        field,
        why: why.into(),
    }
}

/// An agent as stored and as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Agent {
    /// 1-64 letters, digits, `-`, `_`, `.`; chat with it as model `agent:NAME`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A served model id; `null`: the model the daemon serves.
    #[serde(default)]
    pub model: Option<String>,
    /// The system prompt of every conversation with the agent.
    #[serde(default)]
    pub instructions: String,
    /// Built-in tools (`kb_search`, `web_search`, `fetch_url`, `current_time`) and MCP tools
    /// (`mcp:SERVER/TOOL`, or `mcp:SERVER/*` for all of a server's tools).
    #[serde(default)]
    pub tools: Vec<String>,
    /// What `kb_search` may search, intersected with the caller's `kb:read` scopes.
    #[serde(default)]
    pub collections: Vec<String>,
    /// Most rounds of tool calls; after the last the model answers without tools.
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    /// Most reasoning (`<think>`) tokens per model turn; `null`: no limit beyond max_tokens.
    #[serde(default)]
    pub reasoning_budget: Option<u32>,
    /// Sampling temperature of every turn; `null`: the request's, else the model's default.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// URL prefixes `fetch_url` is limited to; empty: any address the fetch rules allow.
    #[serde(default)]
    pub fetch_sites: Vec<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub updated: u64,
}

fn default_max_steps() -> u32 {
    DEFAULT_MAX_STEPS
}

/// A change to an agent: absent fields stay; `null` clears the optional ones.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentPatch {
    pub description: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub model: Option<Option<String>>,
    pub instructions: Option<String>,
    pub tools: Option<Vec<String>>,
    pub collections: Option<Vec<String>>,
    pub max_steps: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u32>)]
    pub reasoning_budget: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<f64>)]
    pub temperature: Option<Option<f64>>,
    pub fetch_sites: Option<Vec<String>>,
}

/// A present field, `null` included, is `Some`: `Some(None)` clears it.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl AgentPatch {
    /// Set the present fields on `a` (validate it afterwards).
    pub fn apply(self, a: &mut Agent) {
        macro_rules! set {
            ($($f:ident),*) => {$( if let Some(v) = self.$f { a.$f = v; } )*};
        }
        set!(
            description,
            model,
            instructions,
            tools,
            collections,
            max_steps,
            reasoning_budget,
            temperature,
            fetch_sites
        );
    }
}

/// Whether `name` can name an agent (or a collection: the same rule).
pub fn valid_name(name: &str) -> bool {
    crate::kb::valid_collection(name)
}

/// A tool entry: a built-in, or `mcp:SERVER/TOOL` / `mcp:SERVER/*`.
pub fn check_tool(t: &str) -> Result<(), String> {
    if BUILTIN_TOOLS.contains(&t) {
        return Ok(());
    }
    if !crate::mcp::McpRef::is_mcp(t) {
        return Err(format!(
            "unknown tool `{t}` (built-in: {}; MCP tools: mcp:SERVER/TOOL or mcp:SERVER/*)",
            BUILTIN_TOOLS.join(", ")
        ));
    }
    crate::mcp::McpRef::parse(t)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl Agent {
    /// A new agent with the defaults and `name`, to be filled and [`validate`](Self::validate)d.
    pub fn named(name: &str) -> Agent {
        Agent {
            name: name.to_string(),
            description: String::new(),
            model: None,
            instructions: String::new(),
            tools: Vec::new(),
            collections: Vec::new(),
            max_steps: DEFAULT_MAX_STEPS,
            reasoning_budget: None,
            temperature: None,
            fetch_sites: Vec::new(),
            created: 0,
            updated: 0,
        }
    }

    /// Check every field; duplicates in lists are dropped (order kept).
    pub fn validate(&mut self) -> Result<(), AgentError> {
        if !valid_name(&self.name) {
            return Err(invalid(
                "name",
                format!(
                    "invalid agent name `{}`: use 1-64 letters, digits, `-`, `_` or `.`",
                    self.name
                ),
            ));
        }
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(invalid(
                "description",
                format!("at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
        if self.instructions.chars().count() > MAX_INSTRUCTIONS_CHARS {
            return Err(invalid(
                "instructions",
                format!("at most {MAX_INSTRUCTIONS_CHARS} characters"),
            ));
        }
        if let Some(m) = &self.model {
            if m.is_empty() || m.starts_with("agent:") {
                return Err(invalid(
                    "model",
                    "a served model id, or null for the daemon's model",
                ));
            }
        }
        dedupe(&mut self.tools);
        if self.tools.len() > MAX_TOOLS {
            return Err(invalid("tools", format!("at most {MAX_TOOLS} tools")));
        }
        for t in &self.tools {
            check_tool(t).map_err(|why| invalid("tools", why))?;
        }
        dedupe(&mut self.collections);
        if self.collections.len() > MAX_COLLECTIONS {
            return Err(invalid(
                "collections",
                format!("at most {MAX_COLLECTIONS} collections"),
            ));
        }
        if let Some(c) = self.collections.iter().find(|c| !valid_name(c)) {
            return Err(invalid(
                "collections",
                format!("invalid collection name `{c}`"),
            ));
        }
        if !(1..=MAX_STEPS).contains(&self.max_steps) {
            return Err(invalid(
                "max_steps",
                format!("must be from 1 to {MAX_STEPS}"),
            ));
        }
        if self.reasoning_budget == Some(0) {
            return Err(invalid(
                "reasoning_budget",
                "must be at least 1, or null for no budget",
            ));
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(invalid("temperature", "must be from 0 to 2"));
            }
        }
        dedupe(&mut self.fetch_sites);
        if self.fetch_sites.len() > MAX_SITES {
            return Err(invalid("fetch_sites", format!("at most {MAX_SITES} sites")));
        }
        for s in &self.fetch_sites {
            let ok = (s.starts_with("http://") || s.starts_with("https://"))
                && s.len() <= 2048
                && !s.chars().any(char::is_whitespace);
            if !ok {
                return Err(invalid(
                    "fetch_sites",
                    format!("`{s}` is not an http:// or https:// URL prefix"),
                ));
            }
        }
        Ok(())
    }

    /// Whether `url` is under one of the agent's `fetch_sites` (any URL when there are none).
    pub fn may_fetch(&self, url: &str) -> bool {
        under_sites(&self.fetch_sites, url)
    }
}

/// Whether `url` is under one of `sites` (URL prefixes; any URL when there are none).
pub fn under_sites(sites: &[String], url: &str) -> bool {
    sites.is_empty() || sites.iter().any(|s| url.starts_with(s.as_str()))
}

fn dedupe(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

/// The agents of the daemon: the table plus its in-memory copy. Cheap to clone.
#[derive(Clone)]
pub struct AgentStore {
    store: Store,
    cache: Arc<RwLock<BTreeMap<String, Arc<Agent>>>>,
    /// Held across each write and its cache update (see the module comment).
    mutate: Arc<Mutex<()>>,
}

impl std::fmt::Debug for AgentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentStore")
            .field("agents", &read(&self.cache).len())
            .finish()
    }
}

impl AgentStore {
    /// Read every agent from `store` (whose schema includes [`AGENTS_V3`]).
    pub fn open(store: Store) -> Result<AgentStore, AgentError> {
        let s = AgentStore {
            store,
            cache: Arc::default(),
            mutate: Arc::default(),
        };
        s.reload()?;
        Ok(s)
    }

    /// Read the table again (SIGHUP, or after an offline edit).
    pub fn reload(&self) -> Result<(), AgentError> {
        let _m = lock(&self.mutate);
        let tx = self.store.begin_read()?;
        let table = tx.open_table(AGENTS)?;
        let mut all = BTreeMap::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let name = k.value().to_string();
            let a: Agent = serde_json::from_slice(v.value()).map_err(|e| AgentError::Corrupt {
                name: name.clone(),
                msg: e.to_string(),
            })?;
            all.insert(name, Arc::new(a));
        }
        *write(&self.cache) = all;
        Ok(())
    }

    /// The agent named `name`, from memory.
    pub fn get(&self, name: &str) -> Option<Arc<Agent>> {
        read(&self.cache).get(name).cloned()
    }

    /// Every agent, by name.
    pub fn list(&self) -> Vec<Arc<Agent>> {
        read(&self.cache).values().cloned().collect()
    }

    pub fn create(&self, mut agent: Agent) -> Result<Agent, AgentError> {
        agent.validate()?;
        let now = unix_now();
        agent.created = now;
        agent.updated = now;
        let _m = lock(&self.mutate);
        if read(&self.cache).contains_key(&agent.name) {
            return Err(AgentError::Exists(agent.name));
        }
        self.put(&agent)?;
        write(&self.cache).insert(agent.name.clone(), Arc::new(agent.clone()));
        Ok(agent)
    }

    pub fn update(&self, name: &str, patch: AgentPatch) -> Result<Agent, AgentError> {
        let _m = lock(&self.mutate);
        let mut agent = self
            .get(name)
            .map(|a| (*a).clone())
            .ok_or_else(|| AgentError::NotFound(name.to_string()))?;
        patch.apply(&mut agent);
        agent.validate()?;
        agent.updated = unix_now().max(agent.created);
        self.put(&agent)?;
        write(&self.cache).insert(agent.name.clone(), Arc::new(agent.clone()));
        Ok(agent)
    }

    pub fn delete(&self, name: &str) -> Result<Agent, AgentError> {
        let _m = lock(&self.mutate);
        let agent = self
            .get(name)
            .ok_or_else(|| AgentError::NotFound(name.to_string()))?;
        let tx = self.store.begin_write()?;
        tx.open_table(AGENTS)?.remove(name)?;
        tx.commit()?;
        write(&self.cache).remove(name);
        Ok((*agent).clone())
    }

    fn put(&self, a: &Agent) -> Result<(), AgentError> {
        let json = serde_json::to_vec(a).map_err(|e| AgentError::Corrupt {
            name: a.name.clone(),
            msg: e.to_string(),
        })?;
        let tx = self.store.begin_write()?;
        tx.open_table(AGENTS)?
            .insert(a.name.as_str(), json.as_slice())?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
