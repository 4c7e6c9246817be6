//! Models by hub id: `--model org/name` against a hub stand-in on loopback
//! (tests/common/hub.rs), with the Hugging Face cache in a temporary directory. No network.

#[path = "common/hub.rs"]
mod standin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use deberta_embed::hub::{resolve_model, HubOptions};
use deberta_embed::{Device, Embedder, EmbedderOptions};
use standin::{fixture_model, fixture_repo, with_fixture, HubStandIn};

const SENTENCES: &str =
    "A man is eating food.\nSomeone eats.\nThe sky is blue over the quiet sea.\n";

/// The variables that steer the hub client, all cleared so the test's own say.
const HF_VARS: [&str; 10] = [
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_ENDPOINT",
    "HF_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_OFFLINE",
    "HUGGING_FACE_HUB_TOKEN",
    "XDG_CACHE_HOME",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_OFFLINE",
];

struct Env {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    input: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("hf");
        std::fs::create_dir_all(&home).unwrap();
        let input = tmp.path().join("in.txt");
        std::fs::write(&input, SENTENCES).unwrap();
        Env {
            _tmp: tmp,
            home,
            input,
        }
    }

    fn cache(&self) -> PathBuf {
        self.home.join("hub")
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache()
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The repo's blobs directory in the cache, created if it is not there yet.
    fn blobs_dir(&self, repo: &str) -> PathBuf {
        let blobs = self.repo_dir(repo).join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        blobs
    }

    /// deberta-embed with HF_HOME in the temp dir and HF_ENDPOINT at `endpoint`.
    fn cmd(&self, endpoint: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_deberta-embed"));
        for v in HF_VARS {
            c.env_remove(v);
        }
        c.env("HOME", self.home.parent().unwrap())
            .env("HF_HOME", &self.home)
            .env("HF_ENDPOINT", endpoint)
            .env("RUST_BACKTRACE", "1");
        c
    }

    fn embed(&self, endpoint: &str, model: &str, extra: &[&str]) -> Output {
        self.cmd(endpoint)
            .args(["embed", "--model", model, "--input"])
            .arg(&self.input)
            .args(["--threads", "2"])
            .args(extra)
            .output()
            .unwrap()
    }
}

/// `embed` of the local fixture directory: what every download must reproduce.
fn local_embedding(env: &Env, name: &str) -> String {
    let o = env.embed(
        "http://127.0.0.1:9",
        fixture_model(name).to_str().unwrap(),
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8(o.stdout).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok_stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "expected success, stderr: {}",
        stderr(o)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Exit 1, one stderr line starting with `error:` and containing every needle, no panic.
fn assert_clean_failure(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err:?}");
    assert!(err.starts_with("error: "), "{err:?}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err:?}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr {err:?} should mention {n:?}");
    }
}

/// The files asked for below `/resolve/` (`{revision}/{file}`), each once, in the order of
/// their first request (a client may ask twice: a one-byte probe for the metadata, then the
/// transfer).
fn downloads(h: &HubStandIn) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in h.requests() {
        if let Some(p) = r.path.split("/resolve/").nth(1) {
            if !out.iter().any(|o| o == p) {
                out.push(p.to_string());
            }
        }
    }
    out
}

/// Every file under `dir` (recursively), links included.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

const EXTRAS: [(&str, &[u8]); 4] = [
    ("README.md", b"# a model card\n"),
    (".gitattributes", b"*.safetensors filter=lfs\n"),
    ("onnx/model.onnx", b"not needed"),
    ("pytorch_model.bin", b"a second weights file, never needed"),
];

#[test]
fn embed_by_id_downloads_what_the_model_needs_once_and_then_works_offline() {
    let h = HubStandIn::start();
    let name = "st6_proj_cls_norm"; // modules.json with Pooling and Normalize folders
    let repo = fixture_repo(name);
    let commit = h.publish_dir(&repo, "main", &fixture_model(name), &EXTRAS);
    let env = Env::new();
    let want = local_embedding(&env, name);

    let first = ok_stdout(&env.embed(&h.url(), &repo, &[]));
    assert_eq!(
        first, want,
        "the downloaded model embeds as the local directory does"
    );

    // one listing, then exactly the needed files, the weights last; no README, ONNX, or
    // second weights file
    let reqs = h.requests();
    assert_eq!(
        reqs.iter().filter(|r| r.path.starts_with("/api/")).count(),
        1,
        "{reqs:?}"
    );
    assert_eq!(
        reqs[0].path,
        format!("/api/models/{repo}/revision/main"),
        "{reqs:?}"
    );
    let mut got = downloads(&h);
    assert_eq!(
        got.last().map(String::as_str),
        Some("main/model.safetensors")
    );
    got.sort();
    let mut expected: Vec<String> = [
        "1_Pooling/config.json",
        "2_Normalize/config.json",
        "config.json",
        "config_sentence_transformers.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    .iter()
    .map(|f| format!("main/{f}"))
    .collect();
    expected.sort();
    assert_eq!(got, expected);
    assert!(
        reqs.iter().any(|r| r.path.starts_with("/lfs/")),
        "the weights came through the LFS redirect"
    );

    // the standard cache layout, as huggingface_hub writes it
    let rd = env.repo_dir(&repo);
    assert_eq!(
        std::fs::read_to_string(rd.join("refs/main")).unwrap(),
        commit
    );
    let snap = rd.join("snapshots").join(&commit);
    let files = h.files(&repo, "main");
    for f in ["config.json", "1_Pooling/config.json", "model.safetensors"] {
        let p = snap.join(f);
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert!(meta.file_type().is_symlink(), "{f} is a link into blobs");
        let target = std::fs::read_link(&p).unwrap();
        assert!(target.is_relative(), "{target:?}");
        let (etag, bytes) = &files[f];
        assert_eq!(
            std::fs::canonicalize(&p).unwrap(),
            std::fs::canonicalize(rd.join("blobs").join(etag)).unwrap()
        );
        assert_eq!(&std::fs::read(&p).unwrap(), bytes, "{f}");
    }
    assert!(!snap.join("README.md").exists() && !snap.join("pytorch_model.bin").exists());
    let leftovers: Vec<PathBuf> = walk(&rd)
        .into_iter()
        .filter(|p| {
            let n = p.to_string_lossy();
            n.ends_with(".incomplete")
                || n.ends_with(".part")
                || n.ends_with(".tmp")
                || n.ends_with(".lock")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // second run: from the cache, no request at all
    let before = h.requests().len();
    let second = ok_stdout(&env.embed(&h.url(), &repo, &[]));
    assert_eq!(second, want);
    assert_eq!(h.requests().len(), before, "the cached model made requests");

    // offline, with no hub at all
    let o = env
        .cmd("http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .args(["embed", "--model", &repo, "--threads", "2", "--input"])
        .arg(&env.input)
        .output()
        .unwrap();
    assert_eq!(ok_stdout(&o), want);

    // the other commands take the id too
    let o = env
        .cmd("http://127.0.0.1:9")
        .args(["info", "--json", "--model", &repo])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok_stdout(&o)).unwrap();
    assert_eq!(v["model"], repo.as_str());
    assert_eq!(
        PathBuf::from(v["model_dir"].as_str().unwrap()),
        snap,
        "info names the snapshot"
    );
    assert_eq!(v["normalize"], true);
    let o = env
        .cmd("http://127.0.0.1:9")
        .args(["tokenize", "--model", &repo, "--input"])
        .arg(&env.input)
        .output()
        .unwrap();
    assert_eq!(ok_stdout(&o).lines().count(), 3);
    let o = env
        .cmd("http://127.0.0.1:9")
        .args(["similarity", "--model", &repo, "a", "b"])
        .output()
        .unwrap();
    assert_eq!(ok_stdout(&o).lines().count(), 2);
    assert_eq!(h.requests().len(), before);
}

#[test]
fn offline_without_the_model_in_the_cache_fails_naming_the_repo() {
    let (h, repo, _) = with_fixture("st6_pool_max");
    let env = Env::new();
    for value in ["1", "true", "YES"] {
        let o = env
            .cmd(&h.url())
            .env("HF_HUB_OFFLINE", value)
            .args(["embed", "--model", &repo, "--input"])
            .arg(&env.input)
            .output()
            .unwrap();
        assert_clean_failure(&o, &[&repo, "HF_HUB_OFFLINE", "not in the cache"]);
    }
    assert!(h.requests().is_empty(), "offline means no request");
    // and HF_HUB_OFFLINE=0 is online
    let o = env
        .cmd(&h.url())
        .env("HF_HUB_OFFLINE", "0")
        .args(["embed", "--model", &repo, "--input"])
        .arg(&env.input)
        .output()
        .unwrap();
    assert_eq!(ok_stdout(&o), local_embedding(&env, "st6_pool_max"));
}

#[test]
fn revisions_by_branch_tag_and_commit() {
    let h = HubStandIn::start();
    let repo = "test-org/evolving";
    let main = h.publish_dir(repo, "main", &fixture_model("st6_pool_max"), &[]);
    // an older 2.x-layout model (pytorch_model.bin, spm.model) under a tag
    let v1 = h.publish_dir(repo, "v1.0", &fixture_model("st2_v3like"), &[]);
    let env = Env::new();

    let o = env.embed(&h.url(), repo, &["--revision", "v1.0"]);
    assert_eq!(ok_stdout(&o), local_embedding(&env, "st2_v3like"));
    let rd = env.repo_dir(repo);
    assert_eq!(std::fs::read_to_string(rd.join("refs/v1.0")).unwrap(), v1);
    assert!(downloads(&h).iter().all(|p| p.starts_with("v1.0/")));
    assert!(downloads(&h).contains(&"v1.0/pytorch_model.bin".to_string()));
    assert!(downloads(&h).contains(&"v1.0/spm.model".to_string()));
    assert!(!rd.join("refs/main").exists());

    // a commit hash: no ref is written for it (as huggingface_hub does), and it is reused
    let o = env.embed(&h.url(), repo, &["--revision", &main]);
    let want_main = local_embedding(&env, "st6_pool_max");
    assert_eq!(ok_stdout(&o), want_main);
    assert!(rd.join("snapshots").join(&main).is_dir());
    assert!(!rd.join("refs").join(&main).exists());
    let n = h.requests().len();
    let o = env
        .cmd("http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .args(["embed", "--model", repo, "--revision", &main, "--input"])
        .arg(&env.input)
        .output()
        .unwrap();
    assert_eq!(ok_stdout(&o), want_main);
    // main itself was never fetched by name: offline it is unknown
    let o = env
        .cmd("http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .args(["embed", "--model", repo, "--input"])
        .arg(&env.input)
        .output()
        .unwrap();
    assert_clean_failure(&o, &[repo, "`main`", "HF_HUB_OFFLINE"]);
    // by name online: the files are already there, only the listing is asked for
    let o = env.embed(&h.url(), repo, &[]);
    assert_eq!(ok_stdout(&o), want_main);
    let new: Vec<String> = h.requests()[n..].iter().map(|r| r.path.clone()).collect();
    assert_eq!(new, vec![format!("/api/models/{repo}/revision/main")]);

    let o = env.embed(&h.url(), repo, &["--revision", "no-such-branch"]);
    assert_clean_failure(&o, &[repo, "revision `no-such-branch` not found"]);
}

#[test]
fn missing_repos_and_files_fail_in_one_line() {
    let h = HubStandIn::start();
    let env = Env::new();
    let o = env.embed(&h.url(), "test-org/nothing-here", &[]);
    assert_clean_failure(&o, &["test-org/nothing-here", "repository not found"]);

    // a repo without weights
    let mut files = standin::files_of(&fixture_model("st6_pool_max"));
    files.remove("model.safetensors");
    h.publish("test-org/no-weights", "main", files);
    let o = env.embed(&h.url(), "test-org/no-weights", &[]);
    assert_clean_failure(&o, &["test-org/no-weights", "model.safetensors"]);

    // a repo without config.json
    let mut files = standin::files_of(&fixture_model("st6_pool_max"));
    files.remove("config.json");
    h.publish("test-org/no-config", "main", files);
    let o = env.embed(&h.url(), "test-org/no-config", &[]);
    assert_clean_failure(&o, &["test-org/no-config", "config.json"]);

    // a listed file the hub cannot serve
    h.publish_dir(
        "test-org/broken",
        "main",
        &fixture_model("st6_pool_max"),
        &[],
    );
    h.break_file("test-org/broken", "tokenizer.json");
    let o = env.embed(&h.url(), "test-org/broken", &[]);
    assert_clean_failure(&o, &["test-org/broken", "tokenizer.json", "not found"]);

    // no hub at that address
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let o = env.embed(&format!("http://{dead}"), "test-org/broken", &[]);
    assert_clean_failure(&o, &["test-org/broken", "cannot reach the hub"]);

    // what is neither a directory nor an id stays a missing directory
    let o = env.embed(&h.url(), "no/such/dir", &[]);
    assert_clean_failure(&o, &["no/such/dir", "does not exist"]);
    assert!(
        h.requests().iter().all(|r| !r.path.contains("no/such")),
        "a path is not an id"
    );
}

#[test]
fn an_unsupported_model_fails_before_its_weights_are_downloaded() {
    let h = HubStandIn::start();
    let repo = "test-org/with-dense";
    let mut files = standin::files_of(&fixture_model("st6_pool_max"));
    let modules = r#"[
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    ]"#;
    files.insert("modules.json".into(), modules.as_bytes().to_vec());
    files.insert(
        "2_Dense/config.json".into(),
        br#"{"in_features": 32, "out_features": 8}"#.to_vec(),
    );
    files.insert("2_Dense/model.safetensors".into(), vec![0; 64]);
    h.publish(repo, "main", files);
    let env = Env::new();
    let o = env.embed(&h.url(), repo, &[]);
    assert_clean_failure(&o, &["Dense"]);
    let got = downloads(&h);
    assert!(
        got.contains(&"main/2_Dense/config.json".to_string()),
        "{got:?}"
    );
    assert!(
        got.iter().all(|p| !p.ends_with(".safetensors")),
        "no weights fetched: {got:?}"
    );
}

#[test]
fn tokens_from_the_environment_and_the_token_file() {
    let h = HubStandIn::start();
    let repo = "test-org/private";
    h.publish_dir(repo, "main", &fixture_model("st6_pool_max"), &[]);
    h.make_private(repo, "hf_good_token");
    let env = Env::new();

    let o = env.embed(&h.url(), repo, &[]);
    assert_clean_failure(&o, &[repo, "HF_TOKEN"]);

    let o = env
        .cmd(&h.url())
        .env("HF_TOKEN", "hf_wrong")
        .args(["embed", "--model", repo, "--input"])
        .arg(&env.input)
        .output()
        .unwrap();
    assert_clean_failure(&o, &[repo, "refused the access token", "401"]);
    assert!(!env.repo_dir(repo).join("snapshots").exists());

    // the token file huggingface-cli login writes
    std::fs::write(env.home.join("token"), "hf_good_token\n").unwrap();
    let n = h.requests().len();
    let o = env.embed(&h.url(), repo, &[]);
    assert_eq!(ok_stdout(&o), local_embedding(&env, "st6_pool_max"));
    let sent: Vec<_> = h.requests()[n..].to_vec();
    assert!(sent.len() > 3);
    // Every request to the hub carries the token. (The storage host that LFS files redirect
    // to is not checked: hf-hub 0.4 sends the token there too on its size probe.)
    for r in sent.iter().filter(|r| !r.path.starts_with("/lfs/")) {
        assert_eq!(
            r.authorization.as_deref(),
            Some("Bearer hf_good_token"),
            "{}",
            r.path
        );
    }
}

#[test]
fn an_interrupted_download_leaves_nothing_and_a_retry_succeeds() {
    let name = "st6_pool_weightedmean";
    let (h, repo, commit) = with_fixture(name);
    h.cut_transfers("model.safetensors", 1);
    h.cut_transfers("tokenizer.json", 1);
    let env = Env::new();

    // the tokenizer comes first: cut, then the run stops
    let o = env.embed(&h.url(), &repo, &[]);
    assert_clean_failure(&o, &[&repo, "tokenizer.json", "interrupted"]);
    let o = env.embed(&h.url(), &repo, &[]);
    assert_clean_failure(&o, &[&repo, "model.safetensors", "interrupted"]);

    // nothing half-written: every blob is a complete file of the repo (no .part, no .lock),
    // the snapshot has no weights
    let rd = env.repo_dir(&repo);
    let files = h.files(&repo, "main");
    for p in walk(&rd.join("blobs")) {
        let etag = p.file_name().unwrap().to_string_lossy().into_owned();
        let (_, bytes) = files
            .values()
            .find(|(e, _)| *e == etag)
            .unwrap_or_else(|| panic!("stray file in blobs: {p:?}"));
        assert_eq!(&std::fs::read(&p).unwrap(), bytes, "{p:?}");
    }
    let snap = rd.join("snapshots").join(&commit);
    assert!(std::fs::symlink_metadata(snap.join("model.safetensors")).is_err());
    assert!(
        snap.join("tokenizer.json").is_file(),
        "kept: it was complete"
    );
    // the ref may already name the commit (huggingface_hub writes it early too), but the
    // snapshot is known to be incomplete: offline, it is refused
    let o = env
        .cmd("http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .args(["embed", "--model", &repo, "--input"])
        .arg(&env.input)
        .output()
        .unwrap();
    assert_clean_failure(&o, &[&repo, "lacks model.safetensors", "HF_HUB_OFFLINE"]);

    let n = h.requests().len();
    let o = env.embed(&h.url(), &repo, &[]);
    assert_eq!(ok_stdout(&o), local_embedding(&env, name));
    let mut retried: Vec<String> = h.requests()[n..]
        .iter()
        .filter(|r| r.path.contains("/resolve/"))
        .map(|r| r.path.clone())
        .collect();
    retried.dedup();
    assert_eq!(
        retried,
        vec![format!("/{repo}/resolve/main/model.safetensors")],
        "only the missing file is fetched again"
    );
}

#[test]
fn a_snapshot_whose_blob_was_deleted_is_mended() {
    let name = "st6_pool_max";
    let (h, repo, _) = with_fixture(name);
    let env = Env::new();
    let want = local_embedding(&env, name);
    assert_eq!(ok_stdout(&env.embed(&h.url(), &repo, &[])), want);
    // someone cleans blobs/ by hand: the tokenizer's link dangles
    let (etag, _) = &h.files(&repo, "main")["tokenizer.json"];
    std::fs::remove_file(env.repo_dir(&repo).join("blobs").join(etag)).unwrap();
    let n = h.requests().len();
    assert_eq!(ok_stdout(&env.embed(&h.url(), &repo, &[])), want);
    let mut again: Vec<String> = h.requests()[n..]
        .iter()
        .filter(|r| r.path.contains("/resolve/"))
        .map(|r| r.path.clone())
        .collect();
    again.dedup();
    assert_eq!(again, vec![format!("/{repo}/resolve/main/tokenizer.json")]);
}

#[test]
fn a_partial_file_left_by_a_killed_run_is_not_resumed_into_a_corrupt_blob() {
    let name = "st6_pool_max";
    let (h, repo, _) = with_fixture(name);
    let env = Env::new();
    // what a run killed during the weights leaves: hf-hub's .part and .lock, here with bytes
    // that are not a prefix of the file
    let (etag, bytes) = &h.files(&repo, "main")["model.safetensors"];
    let blobs = env.blobs_dir(&repo);
    std::fs::write(
        blobs.join(format!("{etag}.part")),
        vec![0xAB; bytes.len() / 3],
    )
    .unwrap();
    std::fs::write(blobs.join(format!("{etag}.lock")), b"").unwrap();
    assert_eq!(
        ok_stdout(&env.embed(&h.url(), &repo, &[])),
        local_embedding(&env, name)
    );
    assert_eq!(&std::fs::read(blobs.join(etag)).unwrap(), bytes);
    let left: Vec<PathBuf> = walk(&blobs)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "part" || e == "lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_file_another_process_is_downloading_is_left_to_it() {
    let name = "st6_pool_max";
    let (h, repo, _) = with_fixture(name);
    let env = Env::new();
    // another download of the tokenizer holds hf-hub's lock on its blob
    let (etag, _) = &h.files(&repo, "main")["tokenizer.json"];
    let blobs = env.blobs_dir(&repo);
    let lock_path = blobs.join(format!("{etag}.lock"));
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap();
    let o = env.embed(&h.url(), &repo, &[]);
    assert_clean_failure(
        &o,
        &[&repo, "another process is downloading tokenizer.json"],
    );
    assert!(
        lock_path.exists(),
        "the other process's lock file is left alone"
    );
    drop(lock);
    assert_eq!(
        ok_stdout(&env.embed(&h.url(), &repo, &[])),
        local_embedding(&env, name)
    );
}

#[test]
fn weak_etags_name_blobs_as_huggingface_hub_does() {
    let h = HubStandIn::start();
    h.weak_etags();
    let name = "st6_pool_max";
    let repo = fixture_repo(name);
    let commit = h.publish_dir(&repo, "main", &fixture_model(name), &[]);
    let env = Env::new();
    assert_eq!(
        ok_stdout(&env.embed(&h.url(), &repo, &[])),
        local_embedding(&env, name)
    );
    // `W/"x"` is the blob `blobs/x` (huggingface_hub drops the `W/`), linked from the snapshot
    let rd = env.repo_dir(&repo);
    let files = h.files(&repo, "main");
    let blobs: Vec<PathBuf> = walk(&rd.join("blobs"));
    assert_eq!(blobs.len(), 8, "{blobs:?}");
    for (f, (etag, bytes)) in &files {
        let blob = rd.join("blobs").join(etag);
        assert_eq!(&std::fs::read(&blob).unwrap(), bytes, "{f}");
        let p = rd.join("snapshots").join(&commit).join(f);
        assert_eq!(
            std::fs::canonicalize(&p).unwrap(),
            std::fs::canonicalize(&blob).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn serve_names_the_model_by_its_id() {
    let (h, repo, commit) = with_fixture("st6_pool_max");
    let env = Env::new();
    // fill the cache, then serve it offline on a free port and ask /v1/embeddings and /info
    ok_stdout(&env.embed(&h.url(), &repo, &[]));
    let mut child = env
        .cmd("http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .args(["serve", "--port", "0", "--threads", "1", "--model", &repo])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let ask = |method: &str, path: &str, body: &str| -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let reply = ask("POST", "/v1/embeddings", r#"{"input": "hello"}"#);
    let info = ask("GET", "/info", "");
    let _ = child.kill();
    let _ = child.wait();
    let reply = reply.unwrap_or_else(|e| panic!("no answer from {addr:?} ({line}): {e}"));
    assert!(reply.contains(&format!("\"model\":\"{repo}\"")), "{reply}");
    // /info names the model by id and the revision by the commit it resolved to
    let info = info.unwrap();
    assert!(info.contains(&format!("\"model_id\":\"{repo}\"")), "{info}");
    assert!(
        info.contains(&format!("\"revision\":\"{commit}\"")),
        "{info}"
    );
}

#[test]
fn the_library_loads_by_id() {
    let name = "st3_conv_multipool";
    let (h, repo, _) = with_fixture(name);
    h.publish_dir(&repo, "other", &fixture_model("st6_pool_max"), &[]);
    // every option explicit, so that the test process's own HF_* variables play no part
    h.accept_token("hf_library_token");
    let tmp = tempfile::tempdir().unwrap();
    let opts = HubOptions {
        endpoint: Some(h.url()),
        cache_dir: Some(tmp.path().to_path_buf()),
        token: Some("hf_library_token".into()),
        offline: Some(false),
        progress: false,
        ..Default::default()
    };
    let dir = resolve_model(Path::new(&repo), &opts).unwrap();
    assert!(dir.starts_with(tmp.path()));
    let eo = || EmbedderOptions {
        threads: Some(2),
        ..Default::default()
    };
    let texts = ["A man is eating food.", "Someone eats."];
    let got = Embedder::load_with(&dir, Device::Cpu, eo())
        .unwrap()
        .encode(&texts)
        .unwrap();
    let want = Embedder::load_with(fixture_model(name), Device::Cpu, eo())
        .unwrap()
        .encode(&texts)
        .unwrap();
    assert_eq!(got, want);
    // a local path is used as it is, with no request
    let n = h.requests().len();
    let local = fixture_model(name);
    assert_eq!(resolve_model(&local, &opts).unwrap(), local);
    // another revision, then the cache answers offline
    let other = HubOptions {
        revision: "other".into(),
        ..opts.clone()
    };
    let dir2 = resolve_model(Path::new(&repo), &other).unwrap();
    assert_ne!(dir2, dir);
    assert!(h.requests().len() > n);
    let offline = HubOptions {
        offline: Some(true),
        endpoint: Some("http://127.0.0.1:9".into()),
        ..other
    };
    assert_eq!(resolve_model(Path::new(&repo), &offline).unwrap(), dir2);
    let err = resolve_model(
        Path::new("test-org/absent"),
        &HubOptions {
            revision: "main".into(),
            ..offline
        },
    )
    .unwrap_err();
    assert!(matches!(err, deberta_embed::Error::Hub { .. }), "{err}");
    assert!(err.to_string().starts_with("test-org/absent: "), "{err}");
}

/// A cache as Python's huggingface_hub lays it out (refs/main, snapshots/<commit>/<file> as
/// relative links to blobs named by etag, a `.locks` folder) is read as it is, offline.
#[cfg(unix)]
#[test]
fn a_cache_written_by_huggingface_hub_is_used_offline() {
    let env = Env::new();
    let name = "st2_v3like";
    let repo = "sentence-transformers-like/model";
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let rd = env.repo_dir(repo);
    std::fs::create_dir_all(rd.join("refs")).unwrap();
    std::fs::create_dir_all(
        env.cache()
            .join(".locks")
            .join("models--sentence-transformers-like--model"),
    )
    .unwrap();
    std::fs::write(rd.join("refs/main"), commit).unwrap();
    for (f, bytes) in standin::files_of(&fixture_model(name)) {
        let etag = standin::hex_digest(&bytes, 64);
        let blob = rd.join("blobs").join(&etag);
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, &bytes).unwrap();
        let link = rd.join("snapshots").join(commit).join(&f);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let depth = f.matches('/').count() + 2;
        let target = format!("{}blobs/{etag}", "../".repeat(depth));
        std::os::unix::fs::symlink(target, &link).unwrap();
    }
    let o = env
        .cmd("http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .args(["embed", "--model", repo, "--input"])
        .arg(&env.input)
        .output()
        .unwrap();
    assert_eq!(ok_stdout(&o), local_embedding(&env, name));
    // HF_HUB_CACHE wins over HF_HOME
    let moved = env.home.parent().unwrap().join("elsewhere");
    std::fs::rename(env.cache(), &moved).unwrap();
    let o = env
        .cmd("http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", &moved)
        .args(["embed", "--model", repo, "--input"])
        .arg(&env.input)
        .output()
        .unwrap();
    assert_eq!(ok_stdout(&o), local_embedding(&env, name));
}

/// Python's huggingface_hub downloads from the stand-in into a cache we then read offline,
/// and reads the cache we wrote (skipped, with a message, where it is not installed: set
/// DEBERTA_EMBED_PYTHON to a python with huggingface_hub to run it).
#[test]
fn python_huggingface_hub_shares_the_cache() {
    let python = std::env::var("DEBERTA_EMBED_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args([
            "-c",
            "import huggingface_hub; print(huggingface_hub.__version__)",
        ])
        .output();
    let version = match probe {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => {
            eprintln!(
                "skipped: {python} has no huggingface_hub (set DEBERTA_EMBED_PYTHON to a python with it)"
            );
            return;
        }
    };
    eprintln!("huggingface_hub {version}");
    let h = HubStandIn::start();
    let env = Env::new();
    let theirs = fixture_repo("st6_pool_lasttoken");
    h.publish_dir(&theirs, "main", &fixture_model("st6_pool_lasttoken"), &[]);
    let ours = fixture_repo("st6_pool_max");
    h.publish_dir(&ours, "main", &fixture_model("st6_pool_max"), &[]);

    // Python with the same cache and hub as ours, and no other HF_* variable
    let py = |script: &str| {
        let mut c = Command::new(&python);
        for v in HF_VARS {
            c.env_remove(v);
        }
        c.env("HOME", env.home.parent().unwrap())
            .env("HF_HOME", &env.home)
            .env("HF_ENDPOINT", h.url())
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .args(["-c", script]);
        c
    };

    // Python downloads, we read offline
    let script = format!("import huggingface_hub as h; print(h.snapshot_download({theirs:?}))");
    let o = py(&script).output().unwrap();
    assert!(o.status.success(), "python: {}", stderr(&o));
    let o = env
        .cmd("http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .args(["embed", "--model", &theirs, "--input"])
        .arg(&env.input)
        .output()
        .unwrap();
    assert_eq!(ok_stdout(&o), local_embedding(&env, "st6_pool_lasttoken"));

    // we download, Python reads offline, and its cache scan finds our repo whole
    ok_stdout(&env.embed(&h.url(), &ours, &[]));
    let needed = ["config.json", "model.safetensors", "1_Pooling/config.json"];
    let script = format!(
        "import huggingface_hub as h\n\
         for f in {needed:?}:\n    \
         print(h.hf_hub_download({ours:?}, f, local_files_only=True))\n\
         scan = h.scan_cache_dir()\n\
         assert not scan.warnings, scan.warnings\n\
         (repo,) = [r for r in scan.repos if r.repo_id == {ours:?}]\n\
         (rev,) = repo.revisions\n\
         print('refs', sorted(rev.refs), 'files', len(rev.files))"
    );
    let o = py(&script).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(o.status.success(), "python: {}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), needed.len() + 1, "{out}");
    let files = h.files(&ours, "main");
    for (line, f) in lines.iter().zip(needed) {
        assert_eq!(std::fs::read(line.trim()).unwrap(), files[f].1, "{f}");
    }
    // modules, 2 sentence-transformers configs, pooling config, config, 2 tokenizer files,
    // weights
    assert_eq!(lines[needed.len()], "refs ['main'] files 8", "{out}");
}
