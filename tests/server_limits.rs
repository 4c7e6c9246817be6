//! The server's defences (`deberta_embed::server` limits): header, body and idle timeouts, the
//! connection cap, and the bound on tokens in flight. Each limit is set small and hit over
//! real loopback connections; the server must stay up and keep answering.

mod common;
#[path = "common/http.rs"]
mod http;
#[path = "common/test_server.rs"]
mod test_server;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::fixtures;
use deberta_embed::server::{Server, ServerOptions};
use deberta_embed::{Device, Embedder, EmbedderOptions};
use serde_json::json;
use test_server::TestServer;

fn load() -> Embedder {
    let opts = EmbedderOptions {
        threads: Some(2),
        ..Default::default()
    };
    Embedder::load_with(
        fixtures().join("models").join("st2_v3like"),
        Device::Cpu,
        opts,
    )
    .expect("fixture model")
}

fn start(opts: ServerOptions) -> TestServer {
    TestServer::start(load(), opts)
}

fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Read until the peer closes; the bytes it sent, and how long that took.
fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("connection not closed: {e} after {:?}", t.elapsed()),
        }
    }
    (out, t.elapsed())
}

fn healthy(addr: SocketAddr) {
    let r = http::get(addr, "/health");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_half_sent_head_is_dropped_after_the_header_timeout() {
    let srv = start(ServerOptions {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(30),
        ..Default::default()
    });
    let mut s = raw(srv.addr);
    s.write_all(b"POST /embed HTTP/1.1\r\nHost: localhost\r\nContent-Le")
        .unwrap();
    let (got, took) = read_to_close(&mut s);
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{got:?}"
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
    // a head trickled in byte by byte, each byte in time but the whole too slow
    let mut s = raw(srv.addr);
    let t = Instant::now();
    for b in b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: yes\r\n".iter() {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    let (_, _) = read_to_close(&mut s);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    healthy(srv.addr);
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let srv = start(ServerOptions {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_millis(400),
        ..Default::default()
    });
    // never sends anything
    let mut s = raw(srv.addr);
    let (got, took) = read_to_close(&mut s);
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{got:?}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
    // kept alive after a request, then silent
    let mut c = http::Conn::connect(srv.addr).unwrap();
    assert_eq!(c.request("GET", "/health", b"").unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        c.request("GET", "/health", b"").is_err(),
        "the idle connection should be closed"
    );
    healthy(srv.addr);
}

#[test]
fn a_slow_body_gets_408() {
    let srv = start(ServerOptions {
        body_timeout: Duration::from_millis(300),
        ..Default::default()
    });
    let mut c = http::Conn::connect(srv.addr).unwrap();
    c.write_raw(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"input\": ",
    )
    .unwrap();
    let t = Instant::now();
    let resp = c.read_response().expect("an answer");
    assert_eq!(resp.status, 408, "{}", resp.text());
    assert!(
        resp.text().contains("not received within"),
        "{}",
        resp.text()
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    healthy(srv.addr);
}

#[test]
fn connections_over_the_cap_get_503_and_health_never_hangs() {
    let srv = start(ServerOptions {
        max_connections: 4,
        ..Default::default()
    });
    let held: Vec<TcpStream> = (0..4).map(|_| raw(srv.addr)).collect();
    // the accept loop takes the held ones first (they were connected first)
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let t = Instant::now();
        let r = http::get(srv.addr, "/health");
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.text().contains("limit of 4 connections"), "{}", r.text());
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    drop(held);
    // the slots come back once the held connections are gone
    let t = Instant::now();
    loop {
        let r = http::get(srv.addr, "/health");
        if r.status == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{}", r.status);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_tiny_token_budget_serializes_requests_and_answers_them_all() {
    // 1 token in flight: every request is larger than the budget, so each runs alone
    let srv = start(ServerOptions {
        max_tokens_in_flight: 1,
        ..Default::default()
    });
    let e = load();
    let addr = srv.addr;
    let threads: Vec<_> = (0..8)
        .map(|k| {
            std::thread::spawn(move || {
                let texts: Vec<String> = (0..5).map(|i| format!("client {k} text {i}")).collect();
                let r = http::post_json(addr, "/embed", &json!({"inputs": texts}));
                (texts, r)
            })
        })
        .collect();
    for t in threads {
        let (texts, r) = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let rows: Vec<Vec<f32>> = serde_json::from_value(r.json()).unwrap();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let want = e.encode(&refs).unwrap();
        for (i, row) in rows.iter().enumerate() {
            let w = want.row(i);
            let n = w.iter().map(|x| x * x).sum::<f32>().sqrt();
            let d = row
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b / n).abs())
                .fold(0.0f32, f32::max);
            assert!(d < 1e-5, "row {i}: {d}");
        }
    }
    let m = http::get(addr, "/metrics").text();
    // admitted one at a time, so no batch ever held two requests
    assert_eq!(
        metric(&m, "deberta_embed_batch_requests_sum"),
        metric(&m, "deberta_embed_batch_requests_count"),
        "{m}"
    );
    assert_eq!(metric(&m, "deberta_embed_batch_requests_count"), 8.0);
    assert!(
        m.lines()
            .any(|l| l.starts_with("deberta_embed_tokens_in_flight ") && l.ends_with(" 0")),
        "{m}"
    );
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

#[test]
fn limits_are_checked_when_the_server_is_built() {
    let bad = [
        ServerOptions {
            max_tokens_in_flight: 0,
            ..Default::default()
        },
        ServerOptions {
            max_connections: 0,
            ..Default::default()
        },
        ServerOptions {
            header_timeout: Duration::ZERO,
            ..Default::default()
        },
        ServerOptions {
            max_connections: usize::MAX,
            ..Default::default()
        },
    ];
    for opts in bad {
        let what = format!("{opts:?}");
        assert!(Server::new(load(), opts).is_err(), "accepted {what}");
    }
}

#[test]
fn an_api_key_guards_every_route_but_health_and_metrics() {
    let srv = start(ServerOptions {
        api_key: Some("s3cret-key".into()),
        model_name: "m".into(),
        ..Default::default()
    });
    let body = json!({"input": ["hello"]}).to_string();
    let send = |auth: Option<&str>, method: &str, path: &str, body: &[u8]| {
        let mut c = http::Conn::connect(srv.addr).unwrap();
        let extra: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        c.send(method, path, body, &extra).unwrap();
        c.read_response().unwrap()
    };
    for (method, path, b) in [
        ("POST", "/v1/embeddings", body.as_bytes()),
        ("POST", "/embed", br#"{"inputs": "hello"}"#.as_slice()),
        ("POST", "/tokenize", br#"{"inputs": "hello"}"#.as_slice()),
        ("GET", "/info", b"".as_slice()),
        ("GET", "/v1/models", b"".as_slice()),
        ("GET", "/nope", b"".as_slice()),
    ] {
        for bad in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cret-ke"),
            Some("Bearer s3cret-keyy"),
            Some("s3cret-key"),
            Some("Basic s3cret-key"),
        ] {
            let r = send(bad, method, path, b);
            assert_eq!(r.status, 401, "{path} with {bad:?}: {}", r.text());
            assert!(r.text().contains("API key"), "{}", r.text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
        let r = send(Some("Bearer s3cret-key"), method, path, b);
        let want = if path == "/nope" { 404 } else { 200 };
        assert_eq!(r.status, want, "{path}: {}", r.text());
    }
    for path in ["/health", "/metrics"] {
        assert_eq!(send(None, "GET", path, b"").status, 200, "{path}");
    }
    assert!(Server::new(
        load(),
        ServerOptions {
            api_key: Some("  ".into()),
            ..Default::default()
        }
    )
    .is_err());
    // the key never shows in the options' Debug form
    let dbg = format!(
        "{:?}",
        ServerOptions {
            api_key: Some("s3cret-key".into()),
            ..Default::default()
        }
    );
    assert!(!dbg.contains("s3cret"), "{dbg}");
}

#[test]
fn info_and_models_describe_what_is_served() {
    let srv = start(ServerOptions {
        model_name: "my-model".into(),
        max_inputs: 77,
        ..Default::default()
    });
    let e = load();
    let info = http::get(srv.addr, "/info");
    assert_eq!(info.status, 200, "{}", info.text());
    let v = info.json();
    assert_eq!(v["model_id"], "my-model");
    assert_eq!(v["dim"], e.dim());
    assert_eq!(v["max_seq_length"], e.max_seq_length());
    assert_eq!(v["max_client_batch_size"], 77);
    assert_eq!(v["dtype"], "f32");
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["pooling"], json!(["mean"]));
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let m = http::get(srv.addr, "/v1/models");
    assert_eq!(m.status, 200, "{}", m.text());
    let m = m.json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "my-model");
    assert_eq!(m["data"][0]["object"], "model");
}
