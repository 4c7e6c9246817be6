//! Request bodies for the server's POST routes, through the real router (limits, JSON parsing,
//! field validation, tokenization, the batcher and the forward) of a server on the fixture
//! model. The first byte picks the route, the rest is the body. Every answer must be JSON and
//! none may be a server error: a 5xx means a request reached a failure it should not.
#![no_main]

use std::path::Path;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use deberta_embed::server::{Server, ServerOptions};
use deberta_embed::{Device, Embedder, EmbedderOptions};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const ROUTES: [&str; 3] = ["/v1/embeddings", "/embed", "/tokenize"];

struct Fixture {
    rt: tokio::runtime::Runtime,
    router: Router,
    _server: Server,
}

thread_local! {
    static FIXTURE: Fixture = {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/st2_v3like");
        let opts = EmbedderOptions { threads: Some(1), ..Default::default() };
        let embedder = Embedder::load_with(dir, Device::Cpu, opts).expect("fixture model");
        let server = Server::new(embedder, ServerOptions::default()).expect("server");
        Fixture {
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"),
            router: server.router(),
            _server: server,
        }
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let route = ROUTES[pick as usize % ROUTES.len()];
    FIXTURE.with(|f| {
        let req = Request::post(route)
            .header("content-type", "application/json")
            .body(Body::from(body.to_vec()))
            .expect("request");
        let (status, bytes) = f.rt.block_on(async {
            let resp = f.router.clone().oneshot(req).await.expect("infallible");
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await;
            (status, bytes.expect("response body"))
        });
        assert!(
            !status.is_server_error(),
            "{route}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            panic!("{route}: {status}: answer is not JSON ({e}): {bytes:?}");
        }
    });
});
