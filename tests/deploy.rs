//! The deployment files against the server they deploy: every metric name in deploy/ (the HPA
//! and the prometheus-adapter rules) is a metric of a live `/metrics` (the HPA's as gauges),
//! every DEBERTA_EMBED_* variable in deploy/ and the Dockerfile is one `serve` reads, and
//! `serve` runs with its model and settings from the environment alone, as the container does.
//! (scripts/check-deploy.sh renders and schema-validates the manifests; scripts/
//! check-docker-steps.sh runs the Dockerfile's steps.)

#[path = "common/http.rs"]
mod http;
#[path = "common/test_server.rs"]
mod test_server;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use deberta_embed::server::ServerOptions;
use deberta_embed::{Device, Embedder, EmbedderOptions};
use serde_json::json;
use test_server::TestServer;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir` (recursively) ending in `.yaml`.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The distinct words of `text` that start with `prefix` and go on with `[A-Za-z0-9_]`.
fn words_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before_ok = i == 0
            || !rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if before_ok {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end.max(1)..];
    }
    out
}

/// `# TYPE name kind` of an exposition.
fn metric_types(exposition: &str) -> std::collections::BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

#[test]
fn every_metric_name_in_deploy_is_exported_and_the_hpa_scales_on_gauges() {
    let e = Embedder::load_with(
        root().join("tests/fixtures/models/st2_v3like"),
        Device::Cpu,
        EmbedderOptions {
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let srv = TestServer::start(e, ServerOptions::default());
    // one request first, so that the per-route families have samples too
    let resp = http::post_json(srv.addr, "/embed", &json!({"inputs": "hello"}));
    assert_eq!(resp.status, 200);
    let metrics = http::get(srv.addr, "/metrics").text();
    let types = metric_types(&metrics);
    assert!(types.len() >= 8, "{types:?}");

    let mut seen = 0;
    for f in yaml_files(&root().join("deploy")) {
        let text = std::fs::read_to_string(&f).unwrap();
        for name in words_with_prefix(&text, "deberta_embed_") {
            assert!(
                types.contains_key(&name),
                "{}: metric {name} is not in /metrics ({:?})",
                f.display(),
                types.keys().collect::<Vec<_>>()
            );
            seen += 1;
        }
    }
    assert!(seen >= 2, "no metric names found in deploy/");
    // the HPA's metrics are per-pod gauges (averaged by the adapter)
    let hpa = std::fs::read_to_string(root().join("deploy/hpa.yaml")).unwrap();
    let hpa_metrics: Vec<String> = hpa
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name: "))
        .filter(|n| n.starts_with("deberta_embed_"))
        .map(String::from)
        .collect();
    assert!(!hpa_metrics.is_empty());
    for m in &hpa_metrics {
        assert_eq!(types.get(m).map(String::as_str), Some("gauge"), "{m}");
    }
}

#[test]
fn every_deberta_embed_variable_in_deploy_and_the_dockerfile_is_a_serve_setting() {
    let help = Command::new(env!("CARGO_BIN_EXE_deberta-embed"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let known = words_with_prefix(&help, "DEBERTA_EMBED_");
    // the model flags too, as a container needs them
    for v in [
        "DEBERTA_EMBED_MODEL",
        "DEBERTA_EMBED_REVISION",
        "DEBERTA_EMBED_DEVICE",
        "DEBERTA_EMBED_DTYPE",
        "DEBERTA_EMBED_THREADS",
        "DEBERTA_EMBED_API_KEY",
        "DEBERTA_EMBED_PORT",
    ] {
        assert!(known.contains(v), "{v} missing from serve --help");
    }
    let mut files = yaml_files(&root().join("deploy"));
    files.push(root().join("Dockerfile"));
    let mut used = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // (a bare `DEBERTA_EMBED_*` in prose is the prefix, not a name)
        for v in words_with_prefix(&text, "DEBERTA_EMBED_")
            .into_iter()
            .filter(|v| !v.ends_with('_'))
        {
            assert!(
                known.contains(&v),
                "{}: {v} is not a serve setting",
                f.display()
            );
            used += 1;
        }
    }
    assert!(used >= 5);
}

/// The container's way: no flags but `serve`, everything from the environment.
#[cfg(unix)]
#[test]
fn serve_takes_the_model_and_settings_from_the_environment_alone() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deberta-embed"))
        .arg("serve")
        .env(
            "DEBERTA_EMBED_MODEL",
            root().join("tests/fixtures/models/st2_v3like"),
        )
        .env("DEBERTA_EMBED_HOST", "127.0.0.1")
        .env("DEBERTA_EMBED_PORT", "0")
        .env("DEBERTA_EMBED_THREADS", "1")
        .env("DEBERTA_EMBED_DEVICE", "cpu")
        .env("DEBERTA_EMBED_DTYPE", "f32")
        .env("DEBERTA_EMBED_API_KEY", "env-key")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr: std::net::SocketAddr = loop {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("serve exited before listening");
        }
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.trim().parse().unwrap();
        }
    };
    let health = http::get(addr, "/health");
    let info = http::get(addr, "/info");
    let mut c = http::Conn::connect(addr).unwrap();
    c.send("GET", "/info", b"", &[("Authorization", "Bearer env-key")])
        .unwrap();
    let authorized = c.read_response().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(health.status, 200);
    assert_eq!(info.status, 401);
    assert_eq!(authorized.status, 200);
    let v = authorized.json();
    assert_eq!(v["model_id"], "st2_v3like");
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["dtype"], "f32");
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let k = std::fs::read_to_string(root().join("deploy/kustomization.yaml")).unwrap();
    for f in [
        "deployment.yaml",
        "service.yaml",
        "hpa.yaml",
        "servicemonitor.yaml",
    ] {
        assert!(
            k.contains(&format!("- {f}")),
            "{f} not in deploy/kustomization.yaml"
        );
        assert!(root().join("deploy").join(f).is_file());
    }
}
