use std::time::Instant;

use super::*;
use crate::web::testserver::{answer, redirect, serve, Reply};

fn config(allow: &[&str]) -> FetchConfig {
    FetchConfig {
        allow: allow.iter().map(|s| s.to_string()).collect(),
        ..FetchConfig::default()
    }
}

fn fetcher_with(cfg: &FetchConfig) -> Fetcher {
    cfg.validate().unwrap();
    Fetcher::new(cfg).unwrap().parse_in_process()
}

fn fetcher(allow: &[&str]) -> Fetcher {
    fetcher_with(&config(allow))
}

#[test]
fn config_defaults_and_validation() {
    let d: FetchConfig = toml::from_str("").unwrap();
    assert_eq!(d, FetchConfig::default());
    assert_eq!(
        (d.allow.len(), d.max_bytes, d.timeout_s, d.max_redirects),
        (0, 2 * 1024 * 1024, 10, 5)
    );
    let c: FetchConfig =
        toml::from_str("allow = [\"10.1.0.0/16\", \"fd00::/8\"]\nmax_redirects = 0").unwrap();
    c.validate().unwrap();

    let err = |toml_text: &str| {
        toml::from_str::<FetchConfig>(toml_text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("allow = [\"10.1.0.0/16\", \"10.0.0.0/33\"]"),
        "fetch.allow: \"10.0.0.0/33\" is not a CIDR"
    );
    assert_eq!(
        err("max_bytes = 0"),
        format!("fetch.max_bytes: must be between 1 and {MAX_BYTES_LIMIT}")
    );
    assert!(err("timeout_s = 0").starts_with("fetch.timeout_s: "));
    assert!(err("timeout_s = 301").starts_with("fetch.timeout_s: "));
    assert!(err("max_redirects = 21").starts_with("fetch.max_redirects: "));
    let unknown = toml::from_str::<FetchConfig>("alow = []").unwrap_err();
    assert!(unknown.to_string().contains("alow"), "{unknown}");
    // A bad entry is refused by the constructor as well.
    let e = Fetcher::new(&config(&["nope"])).unwrap_err();
    assert_eq!(e.to_string(), "fetch.allow: \"nope\" is not a CIDR");
}

#[tokio::test]
async fn urls_other_than_plain_http_are_refused() {
    let f = fetcher(&[]);
    for (url, why) in [
        ("ftp://example.com/x", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://example.com/", "only http and https"),
        ("http://user:pw@example.com/", "credentials"),
        ("https://user@example.com/", "credentials"),
        ("example.com/page", "not a URL"),
        ("http://", "not a URL"),
    ] {
        let e = f.fetch(url).await.unwrap_err();
        assert!(
            matches!(&e, WebError::BadUrl { why: w, .. } if w.contains(why)),
            "{url}: {e:?}"
        );
        assert_eq!(e.kind(), "error");
        assert!(e.to_string().starts_with(url), "{e}");
    }
}

#[tokio::test]
async fn loopback_literal_is_refused_before_connecting() {
    let srv = serve("127.0.0.1", |_| {
        answer("200 OK", Some("text/plain"), b"secret")
    })
    .await;
    let e = fetcher(&[]).fetch(&srv.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), "refused");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: 127.0.0.1 is a loopback address (allow it in [fetch] allow)",
            srv.url("/")
        )
    );
    assert!(srv.seen().is_empty(), "{:?}", srv.seen());
}

#[tokio::test]
async fn other_spellings_of_special_addresses_are_refused() {
    // The URL parser turns these into the addresses they denote; each is refused without a
    // connection (nothing listens on most of them, so a connect would be a different error).
    let f = fetcher(&[]);
    for (url, ip) in [
        ("http://0x7f.1/", "127.0.0.1"),
        ("http://2130706433/", "127.0.0.1"),
        ("http://127.1:9/", "127.0.0.1"),
        ("http://[::1]/", "::1"),
        ("http://[::ffff:127.0.0.1]/", "127.0.0.1"),
        ("http://[::ffff:a9fe:a9fe]/", "169.254.169.254"),
        ("http://0.0.0.0/", "0.0.0.0"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254",
        ),
        ("http://10.0.0.1/", "10.0.0.1"),
        ("http://[fd00::1]/", "fd00::1"),
        ("http://[fe80::1]/", "fe80::1"),
        ("http://100.64.0.1/", "100.64.0.1"),
        ("http://224.0.0.1/", "224.0.0.1"),
        ("http://255.255.255.255/", "255.255.255.255"),
        ("http://192.0.2.1/", "192.0.2.1"),
    ] {
        let e = f.fetch(url).await.unwrap_err();
        match &e {
            WebError::Refused { why, .. } => assert!(why.contains(ip), "{url}: {why}"),
            other => panic!("{url}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn localhost_name_is_refused_through_resolution() {
    let srv = serve("127.0.0.1", |_| {
        answer("200 OK", Some("text/plain"), b"secret")
    })
    .await;
    let url = format!("http://localhost:{}/", srv.addr.port());
    let e = fetcher(&[]).fetch(&url).await.unwrap_err();
    assert_eq!(e.kind(), "refused", "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with(&url), "{msg}");
    assert!(msg.contains("localhost resolves to "), "{msg}");
    assert!(
        msg.contains("a loopback address (allow it in [fetch] allow)"),
        "{msg}"
    );
    assert!(srv.seen().is_empty(), "{:?}", srv.seen());
}

#[tokio::test]
async fn allowed_html_page_becomes_text_with_title_and_charset() {
    // windows-1252 bytes: é is 0xE9, not valid UTF-8, so only the declared charset decodes it.
    let mut html = b"<html><head><title>Caf\xe9 menu</title><script>var x = 'hidden';</script>\
        </head><body><h1>Today</h1><p>Fresh caf\xe9 au lait.</p><ul><li>one</li><li>two</li>\
        </ul></body></html>"
        .to_vec();
    html.extend_from_slice(b"\n");
    let len = html.len();
    let srv = serve("127.0.0.1", move |path| match path {
        "/menu" => answer("200 OK", Some("text/html; charset=\"windows-1252\""), &html),
        _ => answer("404 Not Found", Some("text/plain"), b"no"),
    })
    .await;
    let page = fetcher(&["127.0.0.0/8"])
        .fetch(&srv.url("/menu"))
        .await
        .unwrap();
    assert_eq!(page.url, srv.url("/menu"));
    assert_eq!(page.title.as_deref(), Some("Café menu"));
    assert_eq!(page.content_type, "text/html");
    assert_eq!(page.bytes, len);
    assert!(page.text.contains("# Today"), "{}", page.text);
    assert!(page.text.contains("Fresh café au lait."), "{}", page.text);
    assert!(page.text.contains("- one\n- two"), "{}", page.text);
    assert!(!page.text.contains("hidden"), "{}", page.text);
    assert_eq!(srv.seen(), ["/menu"]);
}

#[tokio::test]
async fn plain_text_and_json_are_decoded_as_sent() {
    // "中文" in GBK.
    let gbk: &[u8] = b"\xd6\xd0\xce\xc4 text\n";
    let srv = serve("127.0.0.1", move |path| match path {
        "/t" => answer("200 OK", Some("text/plain; charset=GBK"), gbk),
        "/j" => answer("200 OK", Some("application/json"), br#"{"a": [1, 2]}"#),
        "/md" => answer("200 OK", Some("text/markdown"), b"# Title\n\nBody *text*"),
        _ => answer("404 Not Found", Some("text/plain"), b"no"),
    })
    .await;
    let f = fetcher(&["127.0.0.1"]);
    let t = f.fetch(&srv.url("/t")).await.unwrap();
    assert_eq!((t.text.as_str(), t.title.as_deref()), ("中文 text", None));
    let j = f.fetch(&srv.url("/j")).await.unwrap();
    assert_eq!(
        (j.text.as_str(), j.content_type.as_str()),
        (r#"{"a": [1, 2]}"#, "application/json")
    );
    let md = f.fetch(&srv.url("/md")).await.unwrap();
    assert_eq!(md.text, "# Title\n\nBody *text*");
    let e = f.fetch(&srv.url("/missing")).await.unwrap_err();
    assert_eq!(
        e,
        WebError::Status {
            url: srv.url("/missing"),
            status: 404
        }
    );
}

#[tokio::test]
async fn redirect_from_an_allowed_address_to_a_refused_one_is_refused() {
    let target = serve("127.0.0.3", |_| {
        answer("200 OK", Some("text/plain"), b"secret")
    })
    .await;
    let secret = target.url("/secret");
    let srv = serve("127.0.0.2", move |path| match path {
        "/go" => redirect("302 Found", &secret),
        "/rel" => redirect("301 Moved Permanently", "/final"),
        "/final" => answer("200 OK", Some("text/plain"), b"arrived"),
        "/ftp" => redirect("307 Temporary Redirect", "ftp://example.com/"),
        _ => answer("404 Not Found", Some("text/plain"), b"no"),
    })
    .await;
    let f = fetcher(&["127.0.0.2/32"]);

    let e = f.fetch(&srv.url("/go")).await.unwrap_err();
    assert_eq!(e.kind(), "refused", "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: 127.0.0.3 is a loopback address (allow it in [fetch] allow)",
            target.url("/secret")
        )
    );
    assert!(target.seen().is_empty(), "{:?}", target.seen());

    let page = f.fetch(&srv.url("/rel")).await.unwrap();
    assert_eq!(
        (page.url, page.text),
        (srv.url("/final"), "arrived".to_string())
    );

    let e = f.fetch(&srv.url("/ftp")).await.unwrap_err();
    assert!(
        matches!(&e, WebError::BadUrl { why, .. } if why.contains("only http and https")),
        "{e:?}"
    );
}

#[tokio::test]
async fn redirect_limit() {
    let srv = serve("127.0.0.1", |path| {
        let n: u32 = path.trim_start_matches("/r/").parse().unwrap_or(0);
        redirect("302 Found", &format!("/r/{}", n + 1))
    })
    .await;
    let cfg = FetchConfig {
        max_redirects: 2,
        ..config(&["127.0.0.0/8"])
    };
    let e = fetcher_with(&cfg)
        .fetch(&srv.url("/r/0"))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        WebError::TooManyRedirects {
            url: srv.url("/r/2"),
            max: 2
        }
    );
    assert_eq!(srv.seen(), ["/r/0", "/r/1", "/r/2"]);

    let cfg = FetchConfig {
        max_redirects: 0,
        ..config(&["127.0.0.0/8"])
    };
    let e = fetcher_with(&cfg)
        .fetch(&srv.url("/r/7"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, WebError::TooManyRedirects { max: 0, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn body_over_max_bytes_is_refused_with_or_without_length() {
    let big = vec![b'a'; 5000];
    let srv = serve("127.0.0.1", move |path| match path {
        "/sized" => answer("200 OK", Some("text/plain"), &big),
        // No Content-Length: the body runs to the end of the connection.
        _ => {
            let mut r = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                .to_vec();
            r.extend_from_slice(&big);
            Reply::Raw(r)
        }
    })
    .await;
    let cfg = FetchConfig {
        max_bytes: 1000,
        ..config(&["127.0.0.0/8"])
    };
    let f = fetcher_with(&cfg);
    for path in ["/sized", "/stream"] {
        let e = f.fetch(&srv.url(path)).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: the answer is larger than the limit of 1000 bytes",
                srv.url(path)
            )
        );
    }
    // At the limit it is fine.
    let cfg = FetchConfig {
        max_bytes: 5000,
        ..cfg
    };
    let page = fetcher_with(&cfg).fetch(&srv.url("/stream")).await.unwrap();
    assert_eq!(page.bytes, 5000);
}

#[tokio::test]
async fn unsupported_content_type_is_named() {
    let srv = serve("127.0.0.1", |path| match path {
        "/png" => answer("200 OK", Some("image/png"), b"\x89PNG"),
        "/none" => answer("200 OK", None, b"what"),
        _ => answer("200 OK", Some("text/html"), b"<script>only()</script>"),
    })
    .await;
    let f = fetcher(&["127.0.0.0/8"]);
    let e = f.fetch(&srv.url("/png")).await.unwrap_err();
    assert!(
        matches!(&e, WebError::ContentType { content_type, .. } if content_type == "image/png"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("content type image/png is not supported"),
        "{e}"
    );
    let e = f.fetch(&srv.url("/none")).await.unwrap_err();
    assert!(e.to_string().contains("content type (none given)"), "{e}");
    let e = f.fetch(&srv.url("/script")).await.unwrap_err();
    assert_eq!(
        e,
        WebError::NoText {
            url: srv.url("/script")
        }
    );
}

#[tokio::test]
async fn silent_server_times_out() {
    let srv = serve("127.0.0.1", |_| Reply::Hang).await;
    let cfg = FetchConfig {
        timeout_s: 1,
        ..config(&["127.0.0.0/8"])
    };
    let started = Instant::now();
    let e = fetcher_with(&cfg)
        .fetch(&srv.url("/slow"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "timeout");
    assert_eq!(
        e.to_string(),
        format!("{}: no complete answer within 1 s", srv.url("/slow"))
    );
    // Generous: the limit is 1 s.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(srv.seen(), ["/slow"]);
}

#[tokio::test]
async fn connection_failure_is_a_net_error() {
    // Bind and drop: nothing listens on the port afterwards.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let e = fetcher(&["127.0.0.0/8"]).fetch(&url).await.unwrap_err();
    assert_eq!(
        e,
        WebError::Net {
            url: url.clone(),
            msg: "cannot connect: Connection refused (os error 111)".into()
        }
    );
}

#[tokio::test]
async fn https_server_certificate_is_verified() {
    use std::sync::Arc;
    // A TLS server on 127.0.0.1 with a self-signed certificate: the handshake runs (so the
    // client's TLS setup works) and the certificate, unknown to the system roots, is refused.
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = acceptor.accept(sock).await;
        }
    });
    let url = format!("https://127.0.0.1:{port}/");
    let e = fetcher(&["127.0.0.0/8"]).fetch(&url).await.unwrap_err();
    task.abort();
    match &e {
        WebError::Net { msg, .. } => {
            assert!(msg.starts_with("cannot connect: "), "{msg}");
            assert!(
                msg.contains("invalid peer certificate: UnknownIssuer"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_resolved_address_is_checked() {
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    let policy = config(&["10.9.0.0/16"]).policy().unwrap();
    assert!(check_all(&policy, "ok.example", &[sa("8.8.8.8:0"), sa("10.9.1.1:0")]).is_ok());
    // One private address among public ones refuses the name, wherever it stands.
    for addrs in [
        [sa("8.8.8.8:0"), sa("192.168.0.1:0")],
        [sa("192.168.0.1:0"), sa("8.8.8.8:0")],
    ] {
        let e = check_all(&policy, "rebind.example", &addrs).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rebind.example resolves to 192.168.0.1, a private address (allow it in [fetch] allow)"
        );
    }
    let e = check_all(
        &policy,
        "v6.example",
        &[sa("[2606:4700::1]:0"), sa("[::1]:0")],
    );
    assert!(e.is_err());
}

#[test]
fn charset_parameter() {
    assert_eq!(
        charset_param("text/html; charset=UTF-8").as_deref(),
        Some("UTF-8")
    );
    assert_eq!(
        charset_param("text/html;foo=bar; Charset=\"gbk\"").as_deref(),
        Some("gbk")
    );
    assert_eq!(charset_param("text/html"), None);
    assert_eq!(charset_param("text/html; charset="), None);
}
