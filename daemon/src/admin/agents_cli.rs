//! `edgeseek agents create|list|show|update|delete`: agents through the running daemon's admin
//! socket, or, when no daemon runs, on the database directly (as key commands do). Both paths
//! run the same operation code as the HTTPS API (`api::agents_http::run`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::cli::{
    call_timeout, connect, open_store, out, print_list, req, scalar, AdminCliError, Conn, Target,
};
use crate::agents::AgentStore;
use crate::api::agents_http::{run, AgentOp};
use crate::api::wire::admin::AdminRequest as Req;

#[derive(Args, Debug)]
pub struct AgentsArgs {
    #[command(subcommand)]
    pub cmd: AgentsCmd,
}

#[derive(Subcommand, Debug)]
pub enum AgentsCmd {
    /// Create an agent
    Create(CreateArgs),
    /// List the agents
    List(JsonArg),
    /// Print one agent as JSON
    Show(NameArg),
    /// Change an agent (only the options given)
    Update(UpdateArgs),
    /// Delete an agent
    Delete(NameArg),
}

#[derive(Args, Debug)]
pub struct JsonArg {
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct NameArg {
    /// Agent name
    #[arg(value_name = "NAME")]
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

/// The fields `create` and `update` share.
#[derive(Args, Debug, Default)]
pub struct Fields {
    /// What the agent is for (shown in model lists and the console)
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// A served model id (default: the daemon's model)
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// The system prompt
    #[arg(long, value_name = "TEXT", conflicts_with = "instructions_file")]
    pub instructions: Option<String>,
    /// Read the system prompt from a file
    #[arg(long, value_name = "FILE")]
    pub instructions_file: Option<PathBuf>,
    /// A tool the agent may call: kb_search, web_search, fetch_url, current_time,
    /// mcp:SERVER/TOOL or mcp:SERVER/* (repeat for several)
    #[arg(long = "tool", value_name = "TOOL")]
    pub tools: Vec<String>,
    /// A knowledge collection kb_search may search (repeat for several)
    #[arg(long = "collection", value_name = "NAME")]
    pub collections: Vec<String>,
    /// Most rounds of tool calls (1-16, default 6)
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u32>,
    /// Most reasoning tokens per model turn
    #[arg(long, value_name = "N")]
    pub reasoning_budget: Option<u32>,
    /// Sampling temperature (0-2)
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
    /// A URL prefix fetch_url is limited to (repeat for several)
    #[arg(long = "fetch-site", value_name = "URL")]
    pub fetch_sites: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Agent name (chat with it as model agent:NAME)
    #[arg(value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub fields: Fields,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Agent name
    #[arg(value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub fields: Fields,
    /// Remove every tool (before adding those given with --tool)
    #[arg(long)]
    pub clear_tools: bool,
    /// Remove every collection (before adding those given with --collection)
    #[arg(long)]
    pub clear_collections: bool,
    /// Remove every fetch site (before adding those given with --fetch-site)
    #[arg(long)]
    pub clear_fetch_sites: bool,
    /// Use the daemon's model again
    #[arg(long, conflicts_with = "model")]
    pub clear_model: bool,
    /// No reasoning budget
    #[arg(long, conflicts_with = "reasoning_budget")]
    pub clear_reasoning_budget: bool,
    /// The model's default temperature
    #[arg(long, conflicts_with = "temperature")]
    pub clear_temperature: bool,
    #[arg(long)]
    pub json: bool,
}

impl Fields {
    /// The JSON fields given on the command line.
    fn json(&self) -> Result<Map<String, Value>, AdminCliError> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        if let Some(d) = &self.description {
            put("description", d.as_str().into());
        }
        if let Some(x) = &self.model {
            put("model", x.as_str().into());
        }
        if let Some(i) = &self.instructions {
            put("instructions", i.as_str().into());
        }
        if let Some(f) = &self.instructions_file {
            let text = std::fs::read_to_string(f).map_err(|e| {
                AdminCliError::Daemon(format!("--instructions-file {}: {e}", f.display()))
            })?;
            put("instructions", text.into());
        }
        if !self.tools.is_empty() {
            put("tools", json!(self.tools));
        }
        if !self.collections.is_empty() {
            put("collections", json!(self.collections));
        }
        if let Some(n) = self.max_steps {
            put("max_steps", n.into());
        }
        if let Some(n) = self.reasoning_budget {
            put("reasoning_budget", n.into());
        }
        if let Some(t) = self.temperature {
            put("temperature", t.into());
        }
        if !self.fetch_sites.is_empty() {
            put("fetch_sites", json!(self.fetch_sites));
        }
        Ok(m)
    }
}

impl UpdateArgs {
    /// The patch: `--clear-*` empty or null a field; list options given replace the list
    /// (after a clear) or add to the agent's current one.
    fn patch(&self, current: &Value) -> Result<Value, AdminCliError> {
        let mut m = self.fields.json()?;
        for (flag, field) in [
            (self.clear_tools, "tools"),
            (self.clear_collections, "collections"),
            (self.clear_fetch_sites, "fetch_sites"),
        ] {
            let given = m.remove(field);
            let mut list: Vec<Value> = if flag {
                Vec::new()
            } else {
                current[field].as_array().cloned().unwrap_or_default()
            };
            if let Some(Value::Array(add)) = given {
                list.extend(add);
            } else if !flag {
                continue;
            }
            m.insert(field.into(), Value::Array(list));
        }
        for (flag, field) in [
            (self.clear_model, "model"),
            (self.clear_reasoning_budget, "reasoning_budget"),
            (self.clear_temperature, "temperature"),
        ] {
            if flag {
                m.insert(field.into(), Value::Null);
            }
        }
        Ok(Value::Object(m))
    }
}

pub fn agents(t: &Target, a: &AgentsArgs) -> Result<(), AdminCliError> {
    match &a.cmd {
        AgentsCmd::List(f) => {
            let v = request(t, AgentOp::List)?;
            if f.json {
                return out(&format!("{v}\n"));
            }
            list(&v)
        }
        AgentsCmd::Show(n) => {
            let v = request(t, AgentOp::Show(n.name.clone()))?;
            pretty(&v, n.json)
        }
        AgentsCmd::Create(c) => {
            let mut m = c.fields.json()?;
            m.insert("name".into(), c.name.as_str().into());
            let v = request(t, AgentOp::Create(Value::Object(m)))?;
            if c.json {
                return out(&format!("{v}\n"));
            }
            out(&format!(
                "created agent {} (chat with it as model agent:{}; keys need scope agent:{} or \
                 agent:*)\n",
                scalar(&v["name"]),
                scalar(&v["name"]),
                scalar(&v["name"])
            ))
        }
        AgentsCmd::Update(u) => {
            let current = request(t, AgentOp::Show(u.name.clone()))?;
            let patch = u.patch(&current)?;
            let v = request(t, AgentOp::Update(u.name.clone(), patch))?;
            if u.json {
                return out(&format!("{v}\n"));
            }
            out(&format!("updated agent {}\n", scalar(&v["name"])))
        }
        AgentsCmd::Delete(n) => {
            let v = request(t, AgentOp::Delete(n.name.clone()))?;
            if n.json {
                return out(&format!("{v}\n"));
            }
            out(&format!("deleted agent {}\n", n.name))
        }
    }
}

fn pretty(v: &Value, compact: bool) -> Result<(), AdminCliError> {
    let text = if compact {
        v.to_string()
    } else {
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    };
    out(&format!("{text}\n"))
}

fn list(v: &Value) -> Result<(), AdminCliError> {
    let join = |x: &Value| {
        x.as_array()
            .map(|a| a.iter().map(scalar).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    };
    print_list(
        v,
        &[
            "NAME",
            "MODEL",
            "TOOLS",
            "COLLECTIONS",
            "STEPS",
            "DESCRIPTION",
        ],
        "no agents (create one with `edgeseek agents create NAME --tool kb_search`)",
        |x| {
            vec![
                scalar(&x["name"]),
                x["model"].as_str().unwrap_or("(served model)").to_string(),
                join(&x["tools"]),
                join(&x["collections"]),
                scalar(&x["max_steps"]),
                scalar(&x["description"]),
            ]
        },
    )
}

/// Run `op` on the daemon, or on the database when no daemon runs.
fn request(t: &Target, op: AgentOp) -> Result<Value, AdminCliError> {
    match connect(t)? {
        Conn::Up(s) => {
            let r = match &op {
                AgentOp::List => req(&Req::AgentsList),
                AgentOp::Show(n) => req(&Req::AgentsShow { name: n }),
                AgentOp::Delete(n) => req(&Req::AgentsDelete { name: n }),
                AgentOp::Create(a) => req(&Req::AgentsCreate { agent: a.clone() }),
                AgentOp::Update(n, p) => req(&Req::AgentsUpdate {
                    name: n,
                    patch: p.clone(),
                }),
            };
            call_timeout(t, s, r, std::time::Duration::from_secs(30))
        }
        Conn::Down => {
            let (action, name) = match &op {
                AgentOp::List | AgentOp::Show(_) => ("", String::new()),
                AgentOp::Create(a) => (
                    "agents.create",
                    a.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                ),
                AgentOp::Update(n, _) => ("agents.update", n.clone()),
                AgentOp::Delete(n) => ("agents.delete", n.clone()),
            };
            let change = || {
                let agents = AgentStore::open(open_store(t)?)
                    .map_err(|e| AdminCliError::Daemon(e.to_string()))?;
                run(&agents, op, None).map_err(|e| AdminCliError::Daemon(e.message))
            };
            if action.is_empty() {
                change()
            } else {
                super::cli::audited(t, action, &name, change)
            }
        }
    }
}
