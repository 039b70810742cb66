use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::json;

use super::*;
use crate::remote::testserver::{json as json_answer, serve, serve_with, sse, sse_head, Step};
use crate::remote::Assembled;

const TOKEN: &str = "sk-test-4f1d9c";

fn cfg(url: &str) -> RemoteConfig {
    RemoteConfig {
        url: url.to_string(),
        model: Some("qwen-72b".into()),
        ..RemoteConfig::default()
    }
}

fn upstream(c: RemoteConfig) -> Upstream {
    Upstream::new("hq", c).unwrap()
}

/// A key file with `mode`, in a directory that lives as long as the returned guard.
fn key_file(content: &str, mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hq.key");
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, p)
}

fn chat(stream: bool) -> Value {
    json!({"model": "hq", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

async fn stream_of(up: &Upstream) -> Stream {
    match up.post("chat/completions", &chat(true)).await.unwrap() {
        Reply::Stream(s) => s,
        Reply::Json(v) => panic!("expected a stream, got {v}"),
    }
}

/// Every payload until the stream ends, errors as their Debug text.
async fn drain(s: &mut Stream) -> Vec<Result<Value, String>> {
    let mut out = Vec::new();
    while let Some(item) = s.next().await {
        out.push(item.map_err(|e| format!("{e:?}")));
    }
    out
}

/// CRLF framing, 中文 in content and reasoning, a comment, usage on the last chunk.
const CHAT_STREAM: &str = ": ping\r\n\r\n\
    data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"reasoning_content\":\"先想\"},\"finish_reason\":null}]}\r\n\r\n\
    data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"你好，\"},\"finish_reason\":null}]}\r\n\r\n\
    data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"世界\"},\"finish_reason\":\"stop\"}]}\r\n\r\n\
    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\r\n\r\n\
    data: [DONE]\r\n\r\n";

#[tokio::test]
async fn a_stream_in_small_pieces_assembles_and_ends_at_done() {
    let server = serve(|_| sse(CHAT_STREAM, 5)).await;
    let up = upstream(cfg(&server.url()));
    let mut s = stream_of(&up).await;
    let mut a = Assembled::default();
    let mut n = 0;
    while let Some(item) = s.next().await {
        a.push(&item.unwrap());
        n += 1;
    }
    assert_eq!(n, 4);
    assert_eq!(
        (a.content.as_str(), a.reasoning.as_str()),
        ("你好，世界", "先想")
    );
    assert_eq!(a.finish_reason.as_deref(), Some("stop"));
    assert_eq!(a.usage.unwrap().prompt_tokens, 9);
    assert!(s.next().await.is_none(), "None ever after [DONE]");
    let req = &server.requests()[0];
    assert_eq!(req.target(), "/v1/chat/completions");
    assert_eq!(req.header("accept"), Some("text/event-stream"));
    assert_eq!(
        req.json()["model"],
        "qwen-72b",
        "the upstream's model name is sent"
    );
    assert_eq!(req.json()["messages"][0]["content"], "hi");
}

#[tokio::test]
async fn nothing_after_done_is_read() {
    let server = serve(|_| sse("data: {\"n\":1}\n\ndata: [DONE]\n\ndata: {\"n\":2}\n\n", 64)).await;
    let up = upstream(cfg(&server.url()));
    let mut s = stream_of(&up).await;
    assert_eq!(drain(&mut s).await, vec![Ok(json!({"n": 1}))]);
    assert!(s.next().await.is_none());
}

#[tokio::test]
async fn eof_before_done_is_truncated_once() {
    let server = serve(|_| sse("data: {\"n\":1}\n\ndata: {\"n\":2}\n\n", 7)).await;
    let up = upstream(cfg(&server.url()));
    let mut s = stream_of(&up).await;
    let out = drain(&mut s).await;
    assert_eq!(out[..2], [Ok(json!({"n": 1})), Ok(json!({"n": 2}))]);
    assert_eq!(out[2..], [Err("Truncated".to_string())]);
    assert!(s.next().await.is_none());
    assert_eq!(up.health().failures, 1, "a cut stream counts towards down");
}

#[tokio::test]
async fn a_payload_that_is_not_json_is_garbage() {
    let server = serve(|_| sse("data: {\"n\":1}\n\ndata: hello\n\ndata: [DONE]\n\n", 64)).await;
    let up = upstream(cfg(&server.url()));
    let mut s = stream_of(&up).await;
    let out = drain(&mut s).await;
    assert_eq!(out[0], Ok(json!({"n": 1})));
    assert!(
        matches!(&out[1..], [Err(e)] if e.starts_with("Garbage(")),
        "{out:?}"
    );
}

#[tokio::test]
async fn an_error_event_mid_stream_is_status() {
    let events = format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"a\"}}}}]}}\n\n\
         data: {{\"error\":{{\"object\":\"error\",\"message\":\"{TOKEN} at http://10.1.1.1:8000/x: CUDA out of memory\",\
         \"type\":\"InternalServerError\",\"param\":null,\"code\":500}}}}\n\n"
    );
    let server = serve(move |_| sse(&events, 64)).await;
    let (_dir, key) = key_file(TOKEN, 0o600);
    let up = upstream(RemoteConfig {
        api_key_file: Some(key),
        ..cfg(&server.url())
    });
    let mut s = stream_of(&up).await;
    assert!(s.next().await.unwrap().is_ok());
    match s.next().await {
        Some(Err(e @ RemoteError::Status { status: 500, .. })) => {
            let RemoteError::Status { message, .. } = &e else {
                unreachable!()
            };
            assert_eq!(message, "<upstream> at <upstream>: CUDA out of memory");
            assert_eq!(e.http_status(), 502);
        }
        other => panic!("{other:?}"),
    }
    assert!(s.next().await.is_none());
}

#[tokio::test]
async fn a_stalled_stream_times_out_and_the_connection_closes() {
    let server = serve(|_| {
        vec![
            sse_head(),
            Step::Write(b"data: {\"n\":1}\n\n".to_vec()),
            Step::Hang,
        ]
    })
    .await;
    let up = upstream(RemoteConfig {
        idle_timeout_s: 1,
        ..cfg(&server.url())
    });
    let mut s = stream_of(&up).await;
    assert_eq!(s.next().await.unwrap().unwrap(), json!({"n": 1}));
    let t = Instant::now();
    assert!(matches!(
        s.next().await,
        Some(Err(RemoteError::Timeout("idle")))
    ));
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(
        server.wait_closed(1).await,
        "the connection is closed after the timeout"
    );
    assert!(s.next().await.is_none());
}

#[tokio::test]
async fn headers_that_do_not_come_are_a_first_byte_timeout() {
    let server = serve(|_| vec![Step::Hang]).await;
    let up = upstream(RemoteConfig {
        first_byte_timeout_s: 1,
        ..cfg(&server.url())
    });
    let t = Instant::now();
    let e = up.post("chat/completions", &chat(false)).await.unwrap_err();
    assert!(matches!(e, RemoteError::Timeout("first byte")), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(e.http_status(), 504);
    assert!(up.health().up, "one timeout is not an outage");
    assert_eq!(up.health().failures, 1);
}

#[tokio::test]
async fn error_answers_carry_the_upstreams_message_scrubbed() {
    let server = serve(|req| {
        let port = req.header("host").unwrap_or("").to_string();
        match req.json()["messages"][0]["content"].as_str().unwrap() {
            "openai" => json_answer(
                "400 Bad Request",
                &json!({"error": {"message": format!("model qwen-72b at http://{port}/v1 (host {port}, key {TOKEN}): maximum context length is 4096 tokens"), "type": "BadRequestError", "code": 400}}).to_string(),
            ),
            "fastapi" => json_answer(
                "422 Unprocessable Entity",
                r#"{"detail":[{"loc":["body","messages"],"msg":"field required","type":"missing"}]}"#,
            ),
            "proxy" => crate::remote::testserver::answer("502 Bad Gateway", "text/html", "<html><body>nginx</body></html>"),
            _ => json_answer("503 Service Unavailable", r#"{"message":"server overloaded"}"#),
        }
    })
    .await;
    let (_dir, key) = key_file(&format!("{TOKEN}\n"), 0o600);
    let up = upstream(RemoteConfig {
        api_key_file: Some(key),
        ..cfg(&server.url())
    });
    let ask = |what: &str| json!({"messages": [{"role": "user", "content": what}]});
    let e = up
        .post("chat/completions", &ask("openai"))
        .await
        .unwrap_err();
    let RemoteError::Status { status, message } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(*status, 400);
    assert_eq!(
        message,
        "model qwen-72b at <upstream> (host <upstream>, key <upstream>): maximum context length is 4096 tokens"
    );
    assert_eq!(e.http_status(), 400);
    let port = server.addr.port().to_string();
    for shown in [e.to_string(), e.client_message("hq")] {
        for secret in [TOKEN, "127.0.0.1", port.as_str(), "http"] {
            assert!(!shown.contains(secret), "`{secret}` in: {shown}");
        }
    }

    let e = up
        .post("chat/completions", &ask("fastapi"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.http_status(), e.to_string().as_str()),
        (422, "HTTP 422: field required")
    );
    let e = up
        .post("chat/completions", &ask("proxy"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.http_status(), e.to_string().as_str()),
        (502, "HTTP 502: Bad Gateway")
    );
    assert!(up.health().up && up.health().failures == 1);
    let e = up.post("chat/completions", &ask("busy")).await.unwrap_err();
    assert_eq!(e.to_string(), "HTTP 503: server overloaded");
    assert!(up.health().up, "two 5xx in a row are not yet an outage");
    up.post("chat/completions", &ask("busy")).await.unwrap_err();
    let h = up.health();
    assert!(!h.up && h.failures == 3, "{h:?}");
    assert_eq!(h.error.as_deref(), Some("HTTP 503: server overloaded"));
    let e = up
        .post("chat/completions", &ask("openai"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RemoteError::Unavailable(why) if why == "HTTP 503: server overloaded"),
        "{e:?}"
    );
    assert_eq!(server.requests().len(), 5, "a down upstream is not asked");
}

#[tokio::test]
async fn past_max_concurrency_is_busy_until_a_stream_is_dropped() {
    let server = serve(|req| {
        if req.json()["stream"] == true {
            vec![
                sse_head(),
                Step::Write(b"data: {\"n\":1}\n\n".to_vec()),
                Step::Hang,
            ]
        } else {
            json_answer("200 OK", r#"{"choices":[]}"#)
        }
    })
    .await;
    let up = upstream(RemoteConfig {
        max_concurrency: 1,
        ..cfg(&server.url())
    });
    let mut s = stream_of(&up).await;
    assert_eq!(s.next().await.unwrap().unwrap(), json!({"n": 1}));
    assert_eq!(up.in_flight(), 1);
    let e = up.post("chat/completions", &chat(false)).await.unwrap_err();
    assert!(matches!(e, RemoteError::Busy), "{e:?}");
    assert_eq!(e.http_status(), 429);
    drop(s);
    assert_eq!(up.in_flight(), 0);
    assert!(
        server.wait_closed(1).await,
        "dropping the stream closes its connection"
    );
    match up.post("chat/completions", &chat(false)).await.unwrap() {
        Reply::Json(v) => assert_eq!(v, json!({"choices": []})),
        Reply::Stream(_) => panic!("asked for JSON"),
    }
    assert_eq!(up.in_flight(), 0, "a JSON reply holds no place once read");
}

#[tokio::test]
async fn the_bearer_token_is_sent_when_configured() {
    let server = serve(|req| {
        if req.header("authorization") == Some(format!("Bearer {TOKEN}").as_str()) {
            json_answer("200 OK", r#"{"object":"list","data":[{"id":"e5"}]}"#)
        } else {
            json_answer(
                "401 Unauthorized",
                r#"{"error":{"message":"invalid api key"}}"#,
            )
        }
    })
    .await;
    let (_dir, key) = key_file(&format!("  {TOKEN}\n"), 0o600);
    let keyed = upstream(RemoteConfig {
        api_key_file: Some(key),
        ..cfg(&server.url())
    });
    let body = json!({"input": ["a"], "model": "whatever"});
    assert!(matches!(
        keyed.post("embeddings", &body).await,
        Ok(Reply::Json(_))
    ));
    let bare = upstream(cfg(&server.url()));
    let e = bare.post("embeddings", &body).await.unwrap_err();
    assert!(
        matches!(&e, RemoteError::Status { status: 401, .. }),
        "{e:?}"
    );
    assert_eq!(e.http_status(), 502, "our credentials are an admin problem");
    assert!(e.client_message("hq").contains("credentials"));
    assert!(
        bare.health().up,
        "a 401 says nothing about the upstream's health"
    );
    let reqs = server.requests();
    assert_eq!(
        reqs[0].header("authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(reqs[0].target(), "/v1/embeddings");
    assert_eq!(reqs[1].header("authorization"), None);
    assert!(!format!("{keyed:?}").contains(TOKEN));
}

#[test]
fn the_key_file_must_be_private_and_not_empty() {
    let with_key = |p: std::path::PathBuf| {
        Upstream::new(
            "hq",
            RemoteConfig {
                api_key_file: Some(p),
                ..cfg("https://vllm.lan/v1")
            },
        )
    };
    let (_d, open) = key_file(TOKEN, 0o644);
    crate::util::expect_err(
        with_key(open),
        &["remote.hq.api_key_file", "group or others", "0644"],
    );
    let (_d, group) = key_file(TOKEN, 0o640);
    crate::util::expect_err(with_key(group), &["0640"]);
    let (_d, private) = key_file(TOKEN, 0o600);
    assert!(with_key(private).is_ok());
    let (_d, empty) = key_file(" \n", 0o600);
    crate::util::expect_err(with_key(empty), &["is empty"]);
    let (_d, two) = key_file("a\nb\n", 0o600);
    crate::util::expect_err(with_key(two), &["one line"]);
    crate::util::expect_err(
        with_key("/nonexistent/hq.key".into()),
        &["/nonexistent/hq.key"],
    );
    let e = with_key("/nonexistent/hq.key".into()).unwrap_err();
    assert_eq!(e.http_status(), 503);
}

#[test]
fn new_checks_the_config_ca_and_tokenizer() {
    crate::util::expect_err(Upstream::new("hq", cfg("ftp://x")), &["remote.hq.url"]);
    crate::util::expect_err(Upstream::new("default", cfg("http://x/v1")), &["reserved"]);
    let dir = tempfile::tempdir().unwrap();
    let no_pem = dir.path().join("ca.pem");
    std::fs::write(&no_pem, "not a certificate").unwrap();
    crate::util::expect_err(
        Upstream::new(
            "hq",
            RemoteConfig {
                ca_file: Some(no_pem),
                ..cfg("https://x/v1")
            },
        ),
        &["remote.hq.ca_file", "no certificate"],
    );
    crate::util::expect_err(
        Upstream::new(
            "hq",
            RemoteConfig {
                tokenizer: Some(dir.path().join("none.json")),
                ..cfg("https://x/v1")
            },
        ),
        &["remote.hq.tokenizer"],
    );
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny-qwen2-genai/tokenizer.json");
    let up = Upstream::new(
        "hq",
        RemoteConfig {
            tokenizer: Some(fixture),
            ..cfg("https://x/v1")
        },
    )
    .unwrap();
    let n = up.count_tokens("hello world, 你好").unwrap();
    assert!(n > 0);
    assert!(
        up.count_tokens("hello world, 你好 hello world, 你好")
            .unwrap()
            > n
    );
    assert_eq!(upstream(cfg("https://x/v1")).count_tokens("hello"), None);
    let up = Upstream::new(
        "hq",
        RemoteConfig {
            model: None,
            ..cfg("https://x/v1")
        },
    )
    .unwrap();
    assert_eq!((up.name(), up.upstream_model()), ("hq", "hq"));
    assert_eq!(up.config().url, "https://x/v1");
    crate::util::assert_send_sync::<Upstream>();
    fn send<T: Send>() {}
    send::<Stream>();
    send::<Reply>();
}

#[tokio::test]
async fn only_the_openai_endpoints_are_forwarded() {
    let up = upstream(cfg("http://127.0.0.1:9/v1"));
    let e = up.post("../admin", &json!({})).await.unwrap_err();
    assert!(matches!(e, RemoteError::Config(_)), "{e:?}");
    assert!(up.health().up);
}

#[tokio::test]
async fn a_connect_failure_marks_down_and_later_requests_are_refused() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let up = upstream(cfg(&format!("http://127.0.0.1:{port}/v1")));
    assert!(up.health().up, "a fresh upstream may be tried");
    let e = up.post("chat/completions", &chat(false)).await.unwrap_err();
    assert!(
        matches!(&e, RemoteError::Connect(m) if m == "connection refused"),
        "{e:?}"
    );
    assert_eq!(e.http_status(), 502);
    let h = up.health();
    assert!(!h.up && h.failures == 1, "{h:?}");
    assert_eq!(
        h.error.as_deref(),
        Some("cannot connect: connection refused")
    );
    let t = Instant::now();
    let e = up.post("chat/completions", &chat(false)).await.unwrap_err();
    assert!(matches!(&e, RemoteError::Unavailable(_)), "{e:?}");
    assert!(t.elapsed() < Duration::from_millis(100));
    assert_eq!(e.http_status(), 503);
    assert_eq!(
        e.client_message("hq"),
        "remote backend `hq` is unavailable: cannot connect: connection refused"
    );
}

#[tokio::test]
async fn probes_mark_up_and_a_missing_model_down() {
    let serves = Arc::new(AtomicBool::new(false));
    let flag = serves.clone();
    let server = serve(move |req| {
        assert_eq!(req.target(), "/v1/models");
        let model = if flag.load(Ordering::SeqCst) {
            "qwen-72b"
        } else {
            "llama-8b"
        };
        json_answer(
            "200 OK",
            &json!({"object": "list", "data": [{"id": "embed"}, {"id": model}]}).to_string(),
        )
    })
    .await;
    let up = upstream(cfg(&server.url()));
    assert_eq!(up.probe().await.unwrap(), ["embed", "llama-8b"]);
    assert!(up.health().checked.is_none(), "probe alone records nothing");
    let h = up.check().await;
    assert!(!h.up && h.checked.is_some(), "{h:?}");
    assert_eq!(
        h.error.as_deref(),
        Some("upstream does not serve model qwen-72b")
    );
    let e = up.post("chat/completions", &chat(false)).await.unwrap_err();
    assert!(matches!(e, RemoteError::Unavailable(_)), "{e:?}");
    serves.store(true, Ordering::SeqCst);
    let h = up.check().await;
    assert!(h.up && h.error.is_none() && h.failures == 0, "{h:?}");
}

#[tokio::test]
async fn a_probe_that_is_not_a_model_list_is_garbage_and_down() {
    let server = serve(|_| json_answer("200 OK", r#"{"status":"ok"}"#)).await;
    let up = upstream(cfg(&server.url()));
    assert!(matches!(up.probe().await, Err(RemoteError::Garbage(_))));
    assert!(!up.check().await.up);
}

#[tokio::test]
async fn the_health_loop_marks_down_and_stops_when_told() {
    let server = serve(|_| json_answer("200 OK", r#"{"data":[{"id":"other"}]}"#)).await;
    let up = Arc::new(upstream(RemoteConfig {
        health_interval_s: 1,
        ..cfg(&server.url())
    }));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(up.clone().watch(rx));
    for _ in 0..200 {
        if !up.health().up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!up.health().up, "the first probe runs at once");
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
    let probes = server.requests().len();
    assert!((1..=2).contains(&probes), "{probes}");
}

#[tokio::test]
async fn requests_that_mark_down_start_the_backoff_probes_at_once() {
    let server = serve(|req| {
        if req.target() == "/v1/models" {
            json_answer("200 OK", r#"{"data":[{"id":"qwen-72b"}]}"#)
        } else {
            json_answer("503 Service Unavailable", r#"{"message":"warming up"}"#)
        }
    })
    .await;
    let up = Arc::new(upstream(RemoteConfig {
        health_interval_s: 3600,
        ..cfg(&server.url())
    }));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(up.clone().watch(rx));
    for _ in 0..500 {
        if up.health().checked.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(up.health().up && up.health().checked.is_some());
    for _ in 0..3 {
        up.post("chat/completions", &chat(false)).await.unwrap_err();
    }
    assert!(!up.health().up);
    let t = Instant::now();
    while !up.health().up && t.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = t.elapsed();
    assert!(
        up.health().up,
        "probed again within the backoff's first step, not the hour"
    );
    assert!(back >= Duration::from_millis(800), "{back:?}");
    task.abort();
}

#[tokio::test]
async fn a_json_answer_that_is_not_json_is_garbage() {
    let server = serve(|_| json_answer("200 OK", "{\"choices\": [")).await;
    let up = upstream(cfg(&server.url()));
    let e = up
        .post("completions", &json!({"prompt": "a"}))
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::Garbage(_)), "{e:?}");
    assert_eq!(e.http_status(), 502);
}

#[tokio::test]
async fn a_stream_answered_with_a_json_error_is_status() {
    let server =
        serve(|_| json_answer("200 OK", r#"{"object":"error","message":"bad","code":400}"#)).await;
    let up = upstream(cfg(&server.url()));
    let e = up.post("chat/completions", &chat(true)).await.unwrap_err();
    assert!(
        matches!(&e, RemoteError::Status { status: 400, message } if message == "bad"),
        "{e:?}"
    );
}

/// A TLS upstream with a self-signed certificate for 127.0.0.1.
async fn tls_server() -> (crate::remote::testserver::Server, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let server = serve_with(Some(acceptor), |_| {
        json_answer("200 OK", r#"{"data":[{"id":"qwen-72b"}]}"#)
    })
    .await;
    (server, ck.cert.pem())
}

#[tokio::test]
async fn ca_file_is_the_only_trust_for_https() {
    let (server, pem) = tls_server().await;
    let url = format!("https://127.0.0.1:{}/v1", server.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let trusted = upstream(RemoteConfig {
        ca_file: Some(ca),
        ..cfg(&url)
    });
    assert_eq!(trusted.probe().await.unwrap(), ["qwen-72b"]);
    let system = upstream(cfg(&url));
    let e = system.probe().await.unwrap_err();
    let RemoteError::Connect(m) = &e else {
        panic!("{e:?}")
    };
    assert!(m.contains("certificate"), "{m}");
    assert!(!m.contains("127.0.0.1"), "{m}");
}
