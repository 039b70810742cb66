//! Agent administration: `/v1/admin/agents` for admin keys, and the same operations for the
//! admin socket (`agents.*`) and the offline CLI, through one function ([`run`]) so that the
//! three agree on every rule and every error.
//!
//! - `GET /v1/admin/agents`, `POST /v1/admin/agents` (201), `GET|PATCH|DELETE
//!   /v1/admin/agents/{name}`.
//! - `GET /v1/admin/tools`: the tools an agent may be given (built-ins, and each registered MCP
//!   server's tools with the server's state), for the console's picker.

use hyper::{Response, StatusCode};
use serde_json::Value;

use super::error::ApiError;
use super::gate::Call;
use super::wire::{self, List};
use super::{json_response, Body};
use crate::agents::{Agent, AgentError, AgentPatch, AgentStore};

/// One agent operation, as the API, the socket and the CLI ask for it.
#[derive(Debug, Clone)]
pub enum AgentOp {
    List,
    Show(String),
    /// The whole new agent: `name` and any of the other fields.
    Create(Value),
    /// The fields to change.
    Update(String, Value),
    Delete(String),
}

/// Run `op` on `store`. `served`: the chat models this daemon knows, when known (an agent's
/// `model` must be one of them; offline the daemon checks at chat time). Writes wait for redb: call
/// it off the reactor.
pub fn run(store: &AgentStore, op: AgentOp, served: Option<&[String]>) -> Result<Value, ApiError> {
    let check_model = |a: &Agent| {
        match (&a.model, served) {
        (Some(m), Some(s)) if !s.contains(m) => Err(ApiError::invalid_param(
            "model",
            format!(
                "model `{m}` is not known here (this daemon knows {}; null means the default model)",
                s.join(", ")
            ),
        )),
        _ => Ok(()),
    }
    };
    let v = match op {
        AgentOp::List => wire::value(&List::new(
            store.list().iter().map(|a| (**a).clone()).collect(),
        )),
        AgentOp::Show(name) => wire::value(&*store.get(&name).ok_or_else(|| not_found(&name))?),
        AgentOp::Create(body) => {
            let (name, patch) = create_body(body)?;
            let mut a = Agent::named(&name);
            patch.apply(&mut a);
            check_model(&a)?;
            wire::value(&store.create(a).map_err(agent_error)?)
        }
        AgentOp::Update(name, body) => {
            let patch = patch_body(body)?;
            if let Some(Some(m)) = &patch.model {
                let mut probe = Agent::named(&name);
                probe.model = Some(m.clone());
                check_model(&probe)?;
            }
            wire::value(&store.update(&name, patch).map_err(agent_error)?)
        }
        AgentOp::Delete(name) => {
            let a = store.delete(&name).map_err(agent_error)?;
            serde_json::json!({"name": a.name, "deleted": true})
        }
    };
    Ok(v)
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("no agent named `{name}`")).with_code("agent_not_found")
}

/// `name` and the rest of a create body; `created` / `updated` (as `show` prints them) are
/// ignored, so an agent's JSON can be posted again to make a copy.
fn create_body(body: Value) -> Result<(String, AgentPatch), ApiError> {
    let Value::Object(mut o) = body else {
        return Err(ApiError::bad_request("the agent must be a JSON object"));
    };
    let name = match o.remove("name") {
        Some(Value::String(s)) => s,
        _ => return Err(ApiError::invalid_param("name", "`name` must be a string")),
    };
    o.remove("created");
    o.remove("updated");
    Ok((name, patch_body(Value::Object(o))?))
}

fn patch_body(body: Value) -> Result<AgentPatch, ApiError> {
    if let Some(o) = body.as_object() {
        if o.contains_key("name") {
            return Err(ApiError::invalid_param(
                "name",
                "an agent cannot be renamed; create a new one and delete this one",
            ));
        }
    }
    wire::from_value(body, "", |path| {
        let field = wire::top(path);
        ApiError::invalid_param(field, format!("`{field}` has the wrong type"))
    })
}

/// The API error for an agent-store error.
pub fn agent_error(e: AgentError) -> ApiError {
    let msg = e.to_string();
    match e {
        AgentError::Invalid { field, .. } => ApiError::invalid_param(field, msg),
        AgentError::Exists(_) => ApiError {
            status: StatusCode::CONFLICT,
            ..ApiError::invalid_param("name", msg).with_code("agent_exists")
        },
        AgentError::NotFound(n) => not_found(&n),
        AgentError::Store(s) => ApiError::store("agents: ", &s),
        AgentError::Corrupt { .. } => ApiError::internal(format!("agents: {msg}")),
    }
}

async fn answer(c: &Call, op: AgentOp, status: StatusCode) -> Result<Response<Body>, ApiError> {
    let admin = c.key()?.id.clone();
    let store = c.app.agents.clone();
    let served = c.app.model_names();
    let write = !matches!(op, AgentOp::List | AgentOp::Show(_));
    let what = format!("{op:?}");
    let v = crate::util::blocking(move || run(&store, op, Some(&served))).await?;
    if write {
        let what = what.split('(').next().unwrap_or_default().to_lowercase();
        tracing::info!(by = %admin, op = %what, agent = %v["name"].as_str().unwrap_or(""), "agent changed over HTTPS");
    }
    Ok(json_response(status, &v))
}

fn body(c: &Call) -> Result<Value, ApiError> {
    wire::object(&c.body)
}

/// `GET /v1/admin/agents`.
pub async fn list(c: Call) -> Result<Response<Body>, ApiError> {
    answer(&c, AgentOp::List, StatusCode::OK).await
}

/// `POST /v1/admin/agents`.
pub async fn create(c: Call) -> Result<Response<Body>, ApiError> {
    let b = body(&c)?;
    answer(&c, AgentOp::Create(b), StatusCode::CREATED).await
}

/// `GET /v1/admin/agents/{name}`.
pub async fn show(c: Call) -> Result<Response<Body>, ApiError> {
    let name = c.param("name")?.to_string();
    answer(&c, AgentOp::Show(name), StatusCode::OK).await
}

/// `PATCH /v1/admin/agents/{name}`.
pub async fn update(c: Call) -> Result<Response<Body>, ApiError> {
    let name = c.param("name")?.to_string();
    let b = body(&c)?;
    answer(&c, AgentOp::Update(name, b), StatusCode::OK).await
}

/// `DELETE /v1/admin/agents/{name}`.
pub async fn delete(c: Call) -> Result<Response<Body>, ApiError> {
    let name = c.param("name")?.to_string();
    answer(&c, AgentOp::Delete(name), StatusCode::OK).await
}

/// `GET /v1/admin/tools`: what an agent may be given, and whether it works here now.
pub async fn tools(c: Call) -> Result<Response<Body>, ApiError> {
    let web = c.app.web();
    let kb = c.app.kb().err().map(|e| e.message);
    let search = web
        .search
        .is_none()
        .then(|| "web search is not configured ([web_search] searxng_url)".to_string());
    let mut data = Vec::new();
    for (name, unavailable) in [
        ("kb_search", kb),
        ("web_search", search),
        ("fetch_url", None),
        ("current_time", None),
    ] {
        let mut t = serde_json::json!({"name": name, "source": "builtin",
            "description": super::agent::tools::describe(name), "available": unavailable.is_none()});
        if let Some(why) = unavailable {
            t["reason"] = why.into();
        }
        data.push(t);
    }
    let mut servers = Vec::new();
    for st in web.mcp.tools().await {
        let (ok, error) = match &st.tools {
            Ok(list) => {
                for t in list {
                    data.push(
                        serde_json::json!({"name": crate::mcp::tool_id(&st.server, &t.name),
                        "source": "mcp", "server": st.server, "description": t.description,
                        "available": true}),
                    );
                }
                (true, Value::Null)
            }
            Err(e) => (false, e.to_string().into()),
        };
        servers
            .push(serde_json::json!({"name": st.server, "url": st.url, "ok": ok, "error": error}));
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"object": "list", "data": data, "servers": servers}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn store() -> (tempfile::TempDir, AgentStore) {
        let d = tempfile::tempdir().unwrap();
        let s =
            AgentStore::open(Store::open_in(d.path(), crate::schema::MIGRATIONS).unwrap()).unwrap();
        (d, s)
    }

    fn param(r: Result<Value, ApiError>) -> (StatusCode, Option<String>) {
        let e = r.expect_err("refused");
        (e.status, e.param)
    }

    #[test]
    fn operations_and_their_errors() {
        let (_d, s) = store();
        let create = |v: Value| run(&s, AgentOp::Create(v), Some(&["qwen".to_string()]));
        let a = create(
            serde_json::json!({"name": "it", "tools": ["kb_search"], "collections": ["it"]}),
        )
        .unwrap();
        assert_eq!(
            (a["max_steps"].as_u64(), a["model"].is_null()),
            (Some(6), true)
        );
        // A shown agent posts again as a copy (created/updated ignored)...
        let mut copy = run(&s, AgentOp::Show("it".into()), None).unwrap();
        copy["name"] = "it2".into();
        assert_eq!(
            create(copy).unwrap()["tools"],
            serde_json::json!(["kb_search"])
        );
        // ...and each rule has its status and parameter.
        let conflict = param(create(serde_json::json!({"name": "it"})));
        assert_eq!(conflict, (StatusCode::CONFLICT, Some("name".into())));
        for (body, p) in [
            (serde_json::json!({"tools": []}), "name"),
            (serde_json::json!({"name": "x", "tools": ["nope"]}), "tools"),
            (
                serde_json::json!({"name": "x", "max_steps": "3"}),
                "max_steps",
            ),
            (serde_json::json!({"name": "x", "color": "red"}), "color"),
            (serde_json::json!({"name": "x", "model": "other"}), "model"),
        ] {
            assert_eq!(
                param(create(body)),
                (StatusCode::BAD_REQUEST, Some(p.into()))
            );
        }
        let upd = |n: &str, v: Value| {
            run(
                &s,
                AgentOp::Update(n.into(), v),
                Some(&["qwen".to_string()]),
            )
        };
        assert_eq!(
            upd("it", serde_json::json!({"model": "qwen"})).unwrap()["model"],
            "qwen"
        );
        assert_eq!(
            upd("it", serde_json::json!({"model": null})).unwrap()["model"],
            Value::Null
        );
        assert_eq!(
            param(upd("it", serde_json::json!({"name": "y"})))
                .1
                .as_deref(),
            Some("name")
        );
        assert_eq!(
            param(upd("nobody", serde_json::json!({}))).0,
            StatusCode::NOT_FOUND
        );
        let list = run(&s, AgentOp::List, None).unwrap();
        assert_eq!(list["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            run(&s, AgentOp::Delete("it2".into()), None).unwrap()["deleted"],
            true
        );
        assert_eq!(
            param(run(&s, AgentOp::Show("it2".into()), None)).0,
            StatusCode::NOT_FOUND
        );
    }
}
