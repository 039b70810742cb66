//! Config and allowlist rules, and the client against a real rmcp MCP server (streamable HTTP
//! over hyper on 127.0.0.1, an ephemeral port).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, CancelledNotificationParam, ContentBlock, ServerCapabilities, ServerConfig,
};
use rmcp::service::{NotificationContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, ServerHandler};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::util::expect_err;

// ---- config ---------------------------------------------------------------------------------

fn parse(text: &str) -> Result<McpConfig, String> {
    let cfg: McpConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

#[test]
fn config_defaults_and_fields() {
    let cfg = parse(
        r#"
        [[servers]]
        name = "erp"
        url = "http://10.0.0.7:8000/mcp"

        [[servers]]
        name = "wiki.v2"
        url = "https://wiki.lan/mcp/"
        timeout_s = 5
        bearer_token_file = "/etc/edgeseek/wiki.token"
        "#,
    )
    .unwrap();
    assert_eq!(cfg.servers.len(), 2);
    assert_eq!(cfg.servers[0].timeout_s, 30);
    assert_eq!(cfg.servers[0].bearer_token_file, None);
    assert_eq!(cfg.servers[1].timeout_s, 5);
    assert_eq!(
        cfg.servers[1].bearer_token_file.as_deref(),
        Some(std::path::Path::new("/etc/edgeseek/wiki.token"))
    );
    assert_eq!(parse("").unwrap(), McpConfig::default());
}

#[test]
fn config_errors_name_the_key() {
    let two = |second: &str| {
        parse(&format!(
            "[[servers]]\nname = \"erp\"\nurl = \"http://a/mcp\"\n[[servers]]\n{second}"
        ))
    };
    expect_err(
        two("name = \"b@d\"\nurl = \"http://b/mcp\""),
        &["mcp.servers[1].name", "'@' is not allowed"],
    );
    expect_err(
        two("name = \"\"\nurl = \"http://b/mcp\""),
        &["mcp.servers[1].name", "1 to 64"],
    );
    expect_err(
        two(&format!(
            "name = \"{}\"\nurl = \"http://b/mcp\"",
            "x".repeat(65)
        )),
        &["mcp.servers[1].name", "1 to 64"],
    );
    expect_err(
        two("name = \"erp\"\nurl = \"http://b/mcp\""),
        &[
            "mcp.servers[1].name",
            "`erp` is already the name of mcp.servers[0]",
        ],
    );
    expect_err(
        two("name = \"b\"\nurl = \"ftp://b/mcp\""),
        &["mcp.servers[1].url", "http:// or https://"],
    );
    expect_err(
        two("name = \"b\"\nurl = \"b:8000/mcp\""),
        &["mcp.servers[1].url"],
    );
    expect_err(
        two("name = \"b\"\nurl = \"not a url\""),
        &["mcp.servers[1].url", "is not a URL"],
    );
    expect_err(
        two("name = \"b\"\nurl = \"http://b/mcp\"\ntimeout_s = 0"),
        &["mcp.servers[1].timeout_s", "1 to 3600"],
    );
    expect_err(
        two("name = \"b\"\nurl = \"http://b/mcp\"\nbearer_token_file = \"\""),
        &["mcp.servers[1].bearer_token_file"],
    );
    // An unknown key is refused by the parser, with its name.
    expect_err(
        two("name = \"b\"\nurl = \"http://b/mcp\"\ntimeout = 3"),
        &["unknown field `timeout`"],
    );
    // A missing url is a parse error too.
    expect_err(two("name = \"b\""), &["missing field `url`"]);
}

// ---- allowlist entries ----------------------------------------------------------------------

#[test]
fn allowlist_entries() {
    let one = McpRef::parse("mcp:erp/lookup_order").unwrap();
    assert_eq!(
        one,
        McpRef {
            server: "erp".into(),
            tool: Some("lookup_order".into())
        }
    );
    assert!(one.matches("erp", "lookup_order"));
    assert!(!one.matches("erp", "lookup"));
    assert!(!one.matches("crm", "lookup_order"));
    assert_eq!(one.to_string(), "mcp:erp/lookup_order");

    let all = McpRef::parse("mcp:erp/*").unwrap();
    assert_eq!(all.tool, None);
    assert!(all.matches("erp", "anything"));
    assert!(!all.matches("erp2", "anything"));
    assert_eq!(all.to_string(), "mcp:erp/*");

    // The tool is everything after the first slash, so ids made by tool_id parse back.
    let id = tool_id("files", "dir/read");
    assert_eq!(id, "mcp:files/dir/read");
    let back = McpRef::parse(&id).unwrap();
    assert!(back.matches("files", "dir/read"));

    assert!(McpRef::is_mcp("mcp:x"));
    assert!(!McpRef::is_mcp("kb_search"));
}

#[test]
fn malformed_allowlist_entries() {
    let form = "must be mcp:SERVER/TOOL or mcp:SERVER/*";
    expect_err(McpRef::parse("mcp:erp"), &["`mcp:erp`", form]);
    expect_err(McpRef::parse("mcp:erp/"), &[form]);
    expect_err(McpRef::parse("kb_search"), &[form]);
    expect_err(
        McpRef::parse("mcp:/lookup"),
        &["server name must be 1 to 64"],
    );
    expect_err(
        McpRef::parse("mcp:e rp/x"),
        &["server name", "' ' is not allowed"],
    );
    expect_err(McpRef::parse("mcp:erp/look up"), &["space or control"]);
    let long = format!("mcp:erp/{}", "t".repeat(129));
    expect_err(McpRef::parse(&long), &["longer than 128"]);
}

// ---- result text ----------------------------------------------------------------------------

#[test]
fn result_text_joins_text_and_describes_the_rest() {
    let mut r = CallToolResult::success(vec![
        ContentBlock::text("line one"),
        ContentBlock::image("iVBORw0KGgo=", "image/png"),
        ContentBlock::text("line two"),
    ]);
    assert_eq!(result_text(&r), "line one\n[image/png, 8 bytes]\nline two");
    r.content.clear();
    r.structured_content = Some(json!({"total": 3}));
    assert_eq!(result_text(&r), r#"{"total":3}"#);
    assert_eq!(base64_len("aGVsbG8="), 5);
    assert_eq!(base64_len("aGVsbG8h"), 6);
}

#[test]
fn error_kinds() {
    let t = McpError::Timeout {
        server: "erp".into(),
        url: "http://h/mcp".into(),
        after: Duration::from_secs(3),
    };
    assert_eq!(t.kind(), "timeout");
    assert_eq!(
        t.to_string(),
        "MCP server erp (http://h/mcp): no answer within 3s"
    );
    let tool = McpError::Tool {
        server: "erp".into(),
        url: "http://h/mcp".into(),
        tool: "x".into(),
        msg: "locked".into(),
    };
    assert_eq!(tool.kind(), "error");
    assert_eq!(tool.message(), "locked");

    // A multi-line report from the server: the message is one line, the text kept whole.
    let report = "2 validation errors\na\n  must be an integer\nb\n  missing";
    let tool = McpError::Tool {
        server: "erp".into(),
        url: "http://h/mcp".into(),
        tool: "add".into(),
        msg: report.into(),
    };
    assert_eq!(
        tool.to_string(),
        "MCP server erp (http://h/mcp): tool add failed: 2 validation errors a must be an integer b missing"
    );
    assert_eq!(tool.message(), report);
    let long = McpError::Protocol {
        server: "erp".into(),
        url: "http://h/mcp".into(),
        msg: "é".repeat(2000),
    };
    let line = long.to_string();
    assert!(line.ends_with('…'), "{line}");
    assert_eq!(line.chars().filter(|c| *c == 'é').count(), 500);
}

// ---- a real MCP server ----------------------------------------------------------------------

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct AddArgs {
    /// First addend.
    a: i64,
    /// Second addend.
    b: i64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct SlowArgs {
    /// How long to sleep.
    ms: u64,
}

#[derive(Clone)]
struct TestTools {
    tool_router: ToolRouter<Self>,
    /// Every `notifications/cancelled` the server received (its reason).
    cancelled: mpsc::UnboundedSender<Option<String>>,
}

#[tool_router]
impl TestTools {
    #[tool(description = "Adds two integers")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        (a + b).to_string()
    }

    #[tool(description = "Always fails")]
    fn fail(&self) -> Result<CallToolResult, ErrorData> {
        Ok(CallToolResult::error(vec![ContentBlock::text(
            "the ledger is locked",
        )]))
    }

    #[tool(description = "Sleeps for ms milliseconds")]
    async fn slow(&self, Parameters(SlowArgs { ms }): Parameters<SlowArgs>) -> String {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        format!("slept {ms} ms")
    }

    #[tool(description = "A caption and a picture")]
    fn picture(&self) -> Result<CallToolResult, ErrorData> {
        Ok(CallToolResult::success(vec![
            ContentBlock::text("a red dot"),
            ContentBlock::image("iVBORw0KGgo=", "image/png"),
        ]))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for TestTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn on_cancelled(
        &self,
        notification: CancelledNotificationParam,
        _context: NotificationContext<RoleServer>,
    ) {
        let _ = self.cancelled.send(notification.reason);
    }
}

#[derive(Clone, Copy, Default)]
struct Options {
    /// Answer with a JSON body instead of an SSE stream.
    json: bool,
    /// Refuse requests without `Authorization: Bearer <token>`.
    token: Option<&'static str>,
}

struct TestServer {
    addr: SocketAddr,
    /// Sessions opened (the service factory runs once per session).
    sessions: Arc<AtomicUsize>,
    cancelled: mpsc::UnboundedReceiver<Option<String>>,
    ct: CancellationToken,
    accept: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn start(opts: Options) -> TestServer {
        Self::start_at("127.0.0.1:0".parse().unwrap(), opts).await
    }

    /// Serves `/mcp/` (and redirects `/mcp` there with a 307, as Starlette-based servers do).
    async fn start_at(addr: SocketAddr, opts: Options) -> TestServer {
        let (tx, cancelled) = mpsc::unbounded_channel();
        let sessions = Arc::new(AtomicUsize::new(0));
        let ct = CancellationToken::new();
        let count = sessions.clone();
        let service: StreamableHttpService<TestTools, LocalSessionManager> =
            StreamableHttpService::new(
                move || {
                    count.fetch_add(1, Ordering::SeqCst);
                    Ok(TestTools {
                        tool_router: TestTools::tool_router(),
                        cancelled: tx.clone(),
                    })
                },
                Default::default(),
                StreamableHttpServerConfig::default()
                    .with_sse_keep_alive(None)
                    .with_json_response(opts.json)
                    .with_cancellation_token(ct.child_token()),
            );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            // Dropped with this task on stop: every open connection goes with it.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let service = service.clone();
                let handler = hyper::service::service_fn(move |req| {
                    let service = service.clone();
                    async move { Ok::<_, Infallible>(route(&service, opts, req).await) }
                });
                conns.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, handler)
                        .await;
                });
            }
        });
        TestServer {
            addr,
            sessions,
            cancelled,
            ct,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp/", self.addr)
    }

    /// Stops listening and drops every connection and session.
    async fn stop(self) -> SocketAddr {
        self.ct.cancel();
        self.accept.abort();
        let _ = self.accept.await;
        self.addr
    }

    /// The reason of the next `notifications/cancelled`; fails the test after 5 s.
    async fn expect_cancelled(&mut self) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(5), self.cancelled.recv())
            .await
            .expect("the server got no notifications/cancelled")
            .expect("the server's channel closed")
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn route(
    service: &StreamableHttpService<TestTools, LocalSessionManager>,
    opts: Options,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let plain = |status: u16, headers: &[(&str, &str)]| {
        let mut b = hyper::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::new()).boxed()).unwrap()
    };
    if req.uri().path() == "/mcp" {
        return plain(307, &[("location", "/mcp/")]);
    }
    if req.uri().path() != "/mcp/" {
        return plain(404, &[]);
    }
    if let Some(token) = opts.token {
        let want = format!("Bearer {token}");
        let got = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if got != Some(want.as_str()) {
            return plain(401, &[("www-authenticate", "Bearer")]);
        }
    }
    service.handle(req).await
}

fn mcp_for(servers: &[(&str, String)]) -> Mcp {
    let config = McpConfig {
        servers: servers
            .iter()
            .map(|(name, url)| McpServerConfig {
                name: name.to_string(),
                url: url.clone(),
                timeout_s: 10,
                bearer_token_file: None,
            })
            .collect(),
    };
    config.validate().unwrap();
    Mcp::new(config)
}

const LONG: Duration = Duration::from_secs(10);

/// `add(a, b)` on `server`, with a generous timeout.
async fn add(mcp: &Mcp, server: &str, a: i64, b: i64) -> Result<String, McpError> {
    mcp.call(server, "add", json!({"a": a, "b": b}), LONG).await
}

#[tokio::test]
async fn lists_and_calls_tools() {
    for json in [false, true] {
        let server = TestServer::start(Options { json, token: None }).await;
        let mcp = mcp_for(&[("t", server.url())]);

        let listed = mcp.tools().await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].server, "t");
        assert_eq!(listed[0].url, server.url());
        let tools = listed[0].tools.as_ref().unwrap();
        let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["add", "fail", "picture", "slow"]);
        let adder = tools.iter().find(|t| t.name == "add").unwrap();
        assert_eq!(adder.description, "Adds two integers");
        assert_eq!(adder.input_schema["type"], "object");
        let properties = &adder.input_schema["properties"];
        assert!(properties["a"].is_object(), "{properties}");
        assert!(properties["b"].is_object(), "{properties}");

        let sum = add(&mcp, "t", 2, 40).await;
        assert_eq!(sum.unwrap(), "42");
        let pic = mcp
            .call("t", "picture", serde_json::Value::Null, LONG)
            .await;
        assert_eq!(pic.unwrap(), "a red dot\n[image/png, 8 bytes]");
        // Every request went over the one session.
        assert_eq!(server.sessions.load(Ordering::SeqCst), 1, "json: {json}");
        server.stop().await;
    }
}

#[tokio::test]
async fn tool_errors_and_bad_requests() {
    let server = TestServer::start(Options::default()).await;
    let url = server.url();
    let mcp = mcp_for(&[("erp", url.clone())]);

    let failed = mcp.call("erp", "fail", json!({}), LONG).await.unwrap_err();
    assert_eq!(
        failed,
        McpError::Tool {
            server: "erp".into(),
            url: url.clone(),
            tool: "fail".into(),
            msg: "the ledger is locked".into()
        }
    );
    assert_eq!(failed.kind(), "error");
    assert_eq!(
        failed.to_string(),
        format!("MCP server erp ({url}): tool fail failed: the ledger is locked")
    );

    let unknown = mcp.call("erp", "nope", json!({}), LONG).await.unwrap_err();
    assert!(
        matches!(unknown, McpError::Protocol { .. } | McpError::Tool { .. }),
        "{unknown:?}"
    );
    assert!(unknown.to_string().contains("nope"), "{unknown}");

    let bad = mcp.call("erp", "add", json!({"a": "two"}), LONG).await;
    let bad = bad.unwrap_err();
    assert!(
        bad.to_string()
            .starts_with(&format!("MCP server erp ({url}): ")),
        "{bad}"
    );

    let not_object = mcp.call("erp", "add", json!([1, 2]), LONG).await;
    expect_err(not_object, &["tool arguments must be a JSON object"]);

    assert_eq!(format!("{mcp:?}"), format!("[(\"erp\", \"{url}\")]"));
    let no_server = mcp.call("crm", "add", json!({}), LONG).await;
    expect_err(no_server, &["MCP server crm is not configured"]);

    // None of it broke the session.
    let sum = add(&mcp, "erp", 1, 1).await;
    assert_eq!(sum.unwrap(), "2");
    assert_eq!(server.sessions.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn timeout_cancels_the_call_and_the_session_lives_on() {
    let mut server = TestServer::start(Options::default()).await;
    let mcp = mcp_for(&[("t", server.url())]);
    assert_eq!(add(&mcp, "t", 1, 2).await.unwrap(), "3");

    let started = Instant::now();
    let slow = mcp
        .call("t", "slow", json!({"ms": 5000}), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(slow, McpError::Timeout { .. }), "{slow:?}");
    assert_eq!(slow.kind(), "timeout");
    assert!(
        slow.to_string().contains("no answer within 300ms"),
        "{slow}"
    );
    server.expect_cancelled().await;

    assert_eq!(add(&mcp, "t", 2, 2).await.unwrap(), "4");
    assert_eq!(server.sessions.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn dropped_call_is_cancelled_and_the_next_call_works() {
    let mut server = TestServer::start(Options::default()).await;
    let mcp = mcp_for(&[("t", server.url())]);
    assert_eq!(add(&mcp, "t", 1, 2).await.unwrap(), "3");

    // The caller gives up (a client disconnect): the future is dropped mid-call.
    let call = mcp.call("t", "slow", json!({"ms": 10_000}), LONG);
    tokio::select! {
        r = call => panic!("the slow call finished: {r:?}"),
        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
    }
    server.expect_cancelled().await;

    // Also a call dropped before its session existed: a fresh Mcp, dropped while connecting
    // or sending, leaves nothing behind that breaks the next call.
    let fresh = mcp_for(&[("t", server.url())]);
    drop(tokio::time::timeout(Duration::from_millis(1), add(&fresh, "t", 0, 0)).await);
    assert_eq!(add(&fresh, "t", 5, 5).await.unwrap(), "10");

    assert_eq!(add(&mcp, "t", 2, 3).await.unwrap(), "5");
    // The first Mcp kept its session; the fresh one opened at most two.
    let sessions = server.sessions.load(Ordering::SeqCst);
    assert!((2..=3).contains(&sessions), "{sessions} sessions");
    server.stop().await;
}

#[tokio::test]
async fn unreachable_server() {
    // A port that was just free: nothing listens there.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{addr}/mcp/");
    let mcp = mcp_for(&[("down", url.clone())]);
    let e = mcp.call("down", "add", json!({}), LONG).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("MCP server down ({url}): connection refused")
    );
    assert_eq!(e.kind(), "error");
    let listed = mcp.tools().await;
    assert_eq!(listed[0].tools.as_ref().unwrap_err(), &e);
}

#[tokio::test]
async fn server_restart_reconnects_and_lists_refresh_after_failures() {
    let server = TestServer::start(Options::default()).await;
    let url = server.url();
    let mcp = mcp_for(&[("t", url.clone())]);
    assert_eq!(add(&mcp, "t", 1, 1).await.unwrap(), "2");
    assert!(mcp.tools().await[0].tools.is_ok());

    let addr = server.stop().await;
    // The list is still served from the cache while it is fresh ...
    assert!(mcp.tools().await[0].tools.is_ok());
    // ... a call finds the server gone ...
    let e = add(&mcp, "t", 1, 1).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("MCP server t ({url}): connection refused")
    );
    // ... and that failure makes the next listing ask again.
    let listed = mcp.tools().await;
    expect_err(listed[0].tools.clone(), &["connection refused"]);

    // The same server comes back on the same address: the next call opens a new session.
    let server = TestServer::start_at(addr, Options::default()).await;
    assert_eq!(add(&mcp, "t", 2, 2).await.unwrap(), "4");
    assert_eq!(server.sessions.load(Ordering::SeqCst), 1);

    // Restarted under a live session (no failed call in between): the old session is unknown
    // to the new process, and the call still goes through.
    let addr = server.stop().await;
    let server = TestServer::start_at(addr, Options::default()).await;
    assert_eq!(add(&mcp, "t", 3, 3).await.unwrap(), "6");
    assert_eq!(server.sessions.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn bearer_token_and_redirect() {
    let server = TestServer::start(Options {
        json: false,
        token: Some("s3cret"),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("erp.token");
    std::fs::write(&token, "s3cret\n").unwrap();
    // Configured without the trailing slash: the 307 to /mcp/ is followed.
    let url = format!("http://{}/mcp", server.addr);
    let server_config = |file: Option<PathBuf>| McpServerConfig {
        name: "erp".into(),
        url: url.clone(),
        timeout_s: 10,
        bearer_token_file: file,
    };
    let with = |file: Option<PathBuf>| {
        Mcp::new(McpConfig {
            servers: vec![server_config(file)],
        })
    };

    let mcp = with(Some(token.clone()));
    assert_eq!(add(&mcp, "erp", 1, 2).await.unwrap(), "3");

    let none = with(None).call("erp", "add", json!({}), LONG).await;
    expect_err(none, &[&format!("MCP server erp ({url}): HTTP 401")]);

    let missing = dir.path().join("missing.token");
    let unreadable = with(Some(missing.clone()))
        .call("erp", "add", json!({}), LONG)
        .await;
    expect_err(
        unreadable,
        &[
            "cannot read bearer_token_file",
            &missing.display().to_string(),
        ],
    );
    server.stop().await;
}

#[tokio::test]
async fn concurrent_calls_share_one_session() {
    let server = TestServer::start(Options::default()).await;
    let mcp = mcp_for(&[("t", server.url())]);
    // All start before any session exists: one connect, the others wait for it.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8i64 {
        let mcp = mcp.clone();
        set.spawn(async move {
            let r = add(&mcp, "t", i, 100).await;
            (i, r)
        });
    }
    let slow = {
        let mcp = mcp.clone();
        tokio::spawn(async move { mcp.call("t", "slow", json!({"ms": 200}), LONG).await })
    };
    while let Some(done) = set.join_next().await {
        let (i, r) = done.unwrap();
        assert_eq!(r.unwrap(), (i + 100).to_string());
    }
    assert_eq!(slow.await.unwrap().unwrap(), "slept 200 ms");
    assert_eq!(server.sessions.load(Ordering::SeqCst), 1);
    server.stop().await;
}

/// A server restarted while a call is in flight: that call's answer is lost with the old
/// process. It fails (today rmcp leaves it to the timeout) no later than its timeout, and the
/// next call goes through on a session with the new process.
#[tokio::test]
async fn call_cut_off_by_a_restart_fails_within_its_timeout() {
    for json in [false, true] {
        let opts = Options { json, token: None };
        let server = TestServer::start(opts).await;
        let mcp = mcp_for(&[("t", server.url())]);
        assert_eq!(add(&mcp, "t", 1, 1).await.unwrap(), "2");
        let started = Instant::now();
        let call = {
            let mcp = mcp.clone();
            let limit = Duration::from_millis(1500);
            tokio::spawn(async move { mcp.call("t", "slow", json!({"ms": 800}), limit).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let addr = server.stop().await;
        let server = TestServer::start_at(addr, opts).await;
        let cut = call.await.unwrap();
        assert!(cut.is_err(), "json {json}: {cut:?}");
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(add(&mcp, "t", 2, 2).await.unwrap(), "4");
        assert_eq!(server.sessions.load(Ordering::SeqCst), 1);
        server.stop().await;
    }
}

/// https:// goes through rustls with ring and the system's roots: a self-signed server is
/// refused at the handshake, with the reason in the one line.
#[tokio::test]
async fn https_server_with_an_untrusted_certificate() {
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = key.cert.der().clone();
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], private)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = acceptor.accept(stream).await;
        }
    });
    let url = format!("https://{addr}/mcp/");
    let mcp = mcp_for(&[("tls", url.clone())]);
    let e = add(&mcp, "tls", 1, 1).await.unwrap_err();
    let line = e.to_string();
    assert!(
        line.starts_with(&format!("MCP server tls ({url}): ")),
        "{line}"
    );
    assert!(line.contains("certificate"), "{line}");
    assert!(matches!(e, McpError::Unavailable { .. }), "{e:?}");
    accept.abort();
}
