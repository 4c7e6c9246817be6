//! Several threads embedding with one shared `Embedder` at once: every result equals the
//! single-threaded one, and nothing waits forever (the run state is locked before the worker
//! pool is entered; locked inside it, a worker holding the lock could pick up another
//! caller's job and wait for itself).

use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use deberta_embed::{Device, Embedder, EmbedderOptions};

#[test]
fn concurrent_encodes_finish_and_equal_serial() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/st2_v3like");
    let opts = EmbedderOptions {
        threads: Some(2),
        ..Default::default()
    };
    let emb = Arc::new(Embedder::load_with(&dir, Device::Cpu, opts).expect("fixture model loads"));
    let texts: Vec<Vec<String>> = (0..8)
        .map(|t| {
            (0..40)
                .map(|i| format!("thread {t} sentence {i}: {}", "word ".repeat(i % 17 + 1)))
                .collect()
        })
        .collect();
    let serial: Vec<Vec<f32>> = texts.iter().map(|t| encode(&emb, t)).collect();
    let (tx, rx) = mpsc::channel();
    for (t, batch) in texts.iter().cloned().enumerate() {
        let (emb, tx) = (Arc::clone(&emb), tx.clone());
        std::thread::spawn(move || {
            for _ in 0..5 {
                let got = encode(&emb, &batch);
                if tx.send((t, got)).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    for _ in 0..8 * 5 {
        let (t, got) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("a concurrent encode did not finish within 120 s (deadlock?)");
        assert_eq!(
            got, serial[t],
            "thread {t}: concurrent result differs from serial"
        );
    }
}

fn encode(emb: &Embedder, texts: &[String]) -> Vec<f32> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    emb.encode(&refs).expect("encode").as_slice().to_vec()
}
