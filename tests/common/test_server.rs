//! A real server on a loopback port for the HTTP tests (tests/server.rs, and tests/gpu.rs with
//! a CUDA embedder): its own tokio runtime thread, stopped and joined on drop.
#![allow(dead_code)]

use std::net::SocketAddr;

use deberta_embed::server::{serve, Server, ServerOptions};
use deberta_embed::Embedder;

/// A server on 127.0.0.1:<free port>, on its own runtime thread; stopped and joined on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Serve `embedder` with `opts`.
    pub fn start(embedder: Embedder, opts: ServerOptions) -> TestServer {
        let server = Server::new(embedder, opts).expect("server");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(serve(listener, server, async {
                let _ = stopped.await;
            }))
        });
        TestServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Ask for shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Shut down and return what `serve` returned.
    pub fn shutdown(mut self) -> std::io::Result<()> {
        self.begin_shutdown();
        self.thread
            .take()
            .expect("thread")
            .join()
            .expect("server thread panicked")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
