//! `web::Fetcher` with HTML parsed by the real `edgeseek parse-worker` child process (the
//! unit tests parse in-process: their executable is not `edgeseek`). The page is served on
//! 127.0.0.1, which the fetcher reaches only because the test allows it.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;

use edgeseek::web::{FetchConfig, Fetcher, WebError};

/// Serve `body` as text/html (GBK) to `n` connections, one request each.
fn serve(body: &'static [u8], n: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut sock, _)) = listener.accept() else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => head.extend_from_slice(&buf[..k]),
                }
            }
            let _ = write!(
                sock,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=gbk\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(body);
        }
    });
    port
}

fn fetcher(allow: &[&str]) -> Fetcher {
    let cfg = FetchConfig {
        allow: allow.iter().map(|s| s.to_string()).collect(),
        ..FetchConfig::default()
    };
    Fetcher::new(&cfg)
        .unwrap()
        .with_parse_worker(PathBuf::from(env!("CARGO_BIN_EXE_edgeseek")))
}

#[tokio::test]
async fn html_page_is_parsed_by_the_worker_process() {
    // "中文标题" / "正文内容" in GBK.
    let body: &'static [u8] = b"<html><head><title>\xd6\xd0\xce\xc4\xb1\xea\xcc\xe2</title></head>\
        <body><nav>menu</nav><h2>Section</h2><p>\xd5\xfd\xce\xc4\xc4\xda\xc8\xdd</p></body></html>";
    let port = serve(body, 1);
    let url = format!("http://127.0.0.1:{port}/page");
    let page = fetcher(&["127.0.0.0/8"]).fetch(&url).await.unwrap();
    assert_eq!(page.url, url);
    assert_eq!(page.title.as_deref(), Some("中文标题"));
    assert_eq!(page.text, "## Section\n\n正文内容");
    assert_eq!(page.bytes, body.len());
}

#[tokio::test]
async fn without_allow_the_same_page_is_refused() {
    let port = serve(b"<p>x</p>", 1);
    let e = fetcher(&[])
        .fetch(&format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    assert!(matches!(e, WebError::Refused { .. }), "{e:?}");
}
