//! A Hugging Face hub stand-in on a loopback port for tests/hub.rs: it serves fixture model
//! directories as hub repos, speaking the protocol huggingface_hub and hf-hub use:
//!
//! * `GET /api/models/{org}/{name}/revision/{rev}`: `{"id", "sha", "siblings": [{"rfilename"}]}`,
//!   and `.../tree/{rev}` (the file listing of Python's `snapshot_download`);
//! * `GET|HEAD /{org}/{name}/resolve/{rev}/{file}`: the file with `ETag`, `X-Repo-Commit`,
//!   `Content-Length`, `Accept-Ranges`, and byte ranges (206 + `Content-Range`); weights files
//!   are stored "in LFS": a 302 to `/lfs/{sha}` on a second port (the storage host, another
//!   origin, as the hub's CDN is), the redirect carrying `X-Linked-Etag` and `X-Linked-Size`;
//! * errors as the hub sends them: 404 with `X-Error-Code: RepoNotFound`, `RevisionNotFound`
//!   or `EntryNotFound`; 401 for a private repo without a token (`RepoNotFound`) and for any
//!   request with a token it does not know ("Invalid credentials in Authorization header").
//!
//! It records every request, can cut a file's body short (the connection closes mid-body), and
//! stops by itself: on drop, or at the latest after [`LIFETIME`].
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The stand-in stops accepting connections after this long, whatever happens.
pub const LIFETIME: Duration = Duration::from_secs(300);

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

/// A file of a revision.
#[derive(Clone)]
struct File {
    bytes: Arc<Vec<u8>>,
    etag: String,
    lfs: bool,
}

#[derive(Clone, Default)]
struct RepoState {
    /// revision name (branch or tag) -> commit
    refs: BTreeMap<String, String>,
    /// commit -> files by path
    commits: HashMap<String, BTreeMap<String, File>>,
    /// Only requests with this token see the repo.
    private_token: Option<String>,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, RepoState>,
    tokens: Vec<String>,
    log: Vec<Request>,
    /// file name -> how many more transfers of its body to cut short
    cut: HashMap<String, usize>,
    /// (repo, path) listed in the repo but answered with 404
    broken: Vec<(String, String)>,
    /// Send weak ETags (`W/"..."`) for the files served directly.
    weak_etags: bool,
}

/// The stand-in; stopped and joined on drop.
pub struct HubStandIn {
    pub addr: SocketAddr,
    /// The storage host LFS files redirect to (another origin, as on the real hub).
    pub storage: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Hex digest of a 64-bit FNV-1a chain over `bytes` (`n` hex digits; a stand-in for the
/// hub's sha1 / sha256 etags and commit hashes: distinct inputs, distinct names).
pub fn hex_digest(bytes: &[u8], n: usize) -> String {
    let mut out = String::new();
    let mut seed = 0xcbf2_9ce4_8422_2325u64;
    while out.len() < n {
        let mut h = seed;
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
        seed = h ^ 0x9e37_79b9_7f4a_7c15;
    }
    out.truncate(n);
    out
}

/// Every file under `dir`, by its path relative to `dir` with `/` separators.
pub fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("read fixture dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("prefix");
                let key = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.insert(key, std::fs::read(&p).expect("read fixture"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

impl HubStandIn {
    pub fn start() -> HubStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let lfs = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        lfs.set_nonblocking(true).expect("nonblocking");
        let storage = lfs.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !sp.load(Ordering::SeqCst) && start.elapsed() < LIFETIME {
                let mut idle = true;
                for (l, on_storage) in [(&listener, false), (&lfs, true)] {
                    if let Ok((conn, _)) = l.accept() {
                        handle(conn, &st, storage, on_storage);
                        idle = false;
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        HubStandIn {
            addr,
            storage,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, for HF_ENDPOINT.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Publish `files` as commit `commit` of `repo`, pointed to by `revision` (a branch or tag
    /// name; several may point to the same commit). Returns the commit.
    pub fn publish(&self, repo: &str, revision: &str, files: BTreeMap<String, Vec<u8>>) -> String {
        let mut all: Vec<u8> = repo.as_bytes().to_vec();
        for (k, v) in &files {
            all.extend_from_slice(k.as_bytes());
            all.extend_from_slice(v);
        }
        let commit = hex_digest(&all, 40);
        let files = files
            .into_iter()
            .map(|(k, v)| {
                let lfs =
                    k.ends_with(".safetensors") || k.ends_with(".bin") || k.ends_with(".onnx");
                let etag = hex_digest(&v, if lfs { 64 } else { 40 });
                (
                    k,
                    File {
                        bytes: Arc::new(v),
                        etag,
                        lfs,
                    },
                )
            })
            .collect();
        let mut st = self.state.lock().unwrap();
        let r = st.repos.entry(repo.to_string()).or_default();
        r.commits.insert(commit.clone(), files);
        r.refs.insert(revision.to_string(), commit.clone());
        commit
    }

    /// Publish a fixture model directory (plus `extra` files) as `repo` at `revision`.
    pub fn publish_dir(
        &self,
        repo: &str,
        revision: &str,
        dir: &Path,
        extra: &[(&str, &[u8])],
    ) -> String {
        let mut files = files_of(dir);
        for (k, v) in extra {
            files.insert(k.to_string(), v.to_vec());
        }
        self.publish(repo, revision, files)
    }

    /// Only requests with `Authorization: Bearer <token>` see `repo`.
    pub fn make_private(&self, repo: &str, token: &str) {
        let mut st = self.state.lock().unwrap();
        if let Some(r) = st.repos.get_mut(repo) {
            r.private_token = Some(token.to_string());
        }
        st.tokens.push(token.to_string());
    }

    /// Requests with `Authorization: Bearer <token>` are accepted (for public repos; any other
    /// token is refused with 401, as the hub refuses it).
    pub fn accept_token(&self, token: &str) {
        self.state.lock().unwrap().tokens.push(token.to_string());
    }

    /// The next `times` transfers of any file named `name` stop after half of the body, and
    /// the connection closes (one-byte range probes are answered whole and not counted).
    pub fn cut_transfers(&self, name: &str, times: usize) {
        self.state
            .lock()
            .unwrap()
            .cut
            .insert(name.to_string(), times);
    }

    /// ETags of the files served directly become weak (`W/"<etag>"`), as HTTP allows.
    pub fn weak_etags(&self) {
        self.state.lock().unwrap().weak_etags = true;
    }

    /// `path` stays in `repo`'s listing but its download answers 404.
    pub fn break_file(&self, repo: &str, path: &str) {
        self.state
            .lock()
            .unwrap()
            .broken
            .push((repo.to_string(), path.to_string()));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    /// The files of `repo` at `revision`, with their etags (as the cache names blobs).
    pub fn files(&self, repo: &str, revision: &str) -> BTreeMap<String, (String, Vec<u8>)> {
        let st = self.state.lock().unwrap();
        let r = &st.repos[repo];
        let commit = r
            .refs
            .get(revision)
            .cloned()
            .unwrap_or(revision.to_string());
        r.commits[&commit]
            .iter()
            .map(|(k, f)| (k.clone(), (f.etag.clone(), f.bytes.to_vec())))
            .collect()
    }
}

impl Drop for HubStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Arc<Vec<u8>>,
    /// Send only this many body bytes, then close.
    cut_at: Option<usize>,
}

impl Reply {
    fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Arc::new(Vec::new()),
            cut_at: None,
        }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Reply {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    fn error(status: u16, code: Option<&str>, message: &str) -> Reply {
        let mut r = Reply::new(status).header("X-Error-Message", message);
        if let Some(c) = code {
            r = r.header("X-Error-Code", c);
        }
        r.body = Arc::new(format!("{{\"error\":\"{message}\"}}").into_bytes());
        r.header("Content-Type", "application/json")
    }
}

fn handle(conn: TcpStream, state: &Mutex<State>, storage: SocketAddr, on_storage: bool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers: HashMap<String, String> = HashMap::new();
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let req = Request {
        method: method.clone(),
        path: path.clone(),
        range: headers.get("range").cloned(),
        authorization: headers.get("authorization").cloned(),
    };
    let reply = {
        let mut st = state.lock().unwrap();
        st.log.push(req.clone());
        route(&mut st, &req, storage, on_storage)
    };
    send(conn, &method, reply, req.range.as_deref());
}

fn route(st: &mut State, req: &Request, storage: SocketAddr, on_storage: bool) -> Reply {
    let token = req
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(t) = token {
        if !st.tokens.iter().any(|k| k == t) {
            return Reply::error(401, None, "Invalid credentials in Authorization header");
        }
    }
    if req.method != "GET" && req.method != "HEAD" {
        return Reply::error(405, None, "Method not allowed");
    }
    let segs: Vec<String> = req.path.split('/').skip(1).map(percent_decode).collect();
    // /lfs/<etag> on the storage host: LFS files, no authentication
    if on_storage {
        if segs.len() != 2 || segs[0] != "lfs" {
            return Reply::error(404, None, "Not found");
        }
        let found = st
            .repos
            .values()
            .flat_map(|r| r.commits.values())
            .find_map(|files| {
                files
                    .iter()
                    .find(|(_, f)| f.etag == segs[1])
                    .map(|(k, f)| (k.clone(), f.clone()))
            });
        return match found {
            Some((name, f)) => file_reply(st, &name, &f, None, req.range.as_deref()),
            None => Reply::error(404, None, "Not found"),
        };
    }
    let (repo, rest, api) = if segs.len() >= 5 && segs[0] == "api" && segs[1] == "models" {
        (format!("{}/{}", segs[2], segs[3]), &segs[4..], true)
    } else if segs.len() >= 3 {
        (format!("{}/{}", segs[0], segs[1]), &segs[2..], false)
    } else {
        return Reply::error(404, None, "Not found");
    };
    let Some(r) = st.repos.get(&repo).cloned() else {
        return Reply::error(401, Some("RepoNotFound"), "Repository not found");
    };
    if let Some(t) = &r.private_token {
        if token != Some(t.as_str()) {
            return Reply::error(401, Some("RepoNotFound"), "Repository not found");
        }
    }
    let commit_of = |rev: &str| -> Option<String> {
        r.refs
            .get(rev)
            .cloned()
            .or_else(|| r.commits.contains_key(rev).then(|| rev.to_string()))
    };
    if api && rest.len() == 2 && rest[0] == "tree" {
        // the recursive file listing huggingface_hub's snapshot_download asks for
        let Some(commit) = commit_of(&rest[1]) else {
            return Reply::error(
                404,
                Some("RevisionNotFound"),
                &format!("Invalid rev id: {}", rest[1]),
            );
        };
        let entries: Vec<serde_json::Value> = r.commits[&commit]
            .iter()
            .map(|(k, f)| {
                let mut e = serde_json::json!({
                    "type": "file", "oid": hex_digest(&f.bytes, 40), "size": f.bytes.len(), "path": k,
                });
                if f.lfs {
                    e["lfs"] = serde_json::json!({
                        "oid": f.etag, "size": f.bytes.len(), "pointerSize": 134,
                    });
                }
                e
            })
            .collect();
        let mut reply = Reply::new(200).header("Content-Type", "application/json");
        reply.body = Arc::new(serde_json::Value::Array(entries).to_string().into_bytes());
        return reply;
    }
    if api {
        if rest.len() != 2 || rest[0] != "revision" {
            return Reply::error(404, None, "Not found");
        }
        let Some(commit) = commit_of(&rest[1]) else {
            return Reply::error(
                404,
                Some("RevisionNotFound"),
                &format!("Invalid rev id: {}", rest[1]),
            );
        };
        let siblings: Vec<serde_json::Value> = r.commits[&commit]
            .keys()
            .map(|k| serde_json::json!({ "rfilename": k }))
            .collect();
        let body = serde_json::json!({
            "_id": hex_digest(repo.as_bytes(), 24),
            "id": repo,
            "modelId": repo,
            "private": r.private_token.is_some(),
            "sha": commit,
            "lastModified": "2026-01-01T00:00:00.000Z",
            "tags": ["sentence-transformers"],
            "siblings": siblings,
        });
        let mut reply = Reply::new(200).header("Content-Type", "application/json");
        reply.body = Arc::new(body.to_string().into_bytes());
        return reply;
    }
    if rest.len() < 3 || rest[0] != "resolve" {
        return Reply::error(404, None, "Not found");
    }
    let Some(commit) = commit_of(&rest[1]) else {
        return Reply::error(
            404,
            Some("RevisionNotFound"),
            &format!("Invalid rev id: {}", rest[1]),
        );
    };
    let file = rest[2..].join("/");
    let broken = st.broken.iter().any(|(br, bf)| br == &repo && bf == &file);
    let Some(f) = r.commits[&commit].get(&file).filter(|_| !broken).cloned() else {
        return Reply::error(
            404,
            Some("EntryNotFound"),
            &format!("{file} does not exist on \"{}\"", rest[1]),
        );
    };
    if f.lfs {
        // as the hub does for LFS files: a redirect to the storage host, with the file's
        // sha256 and size on the redirect
        return Reply::new(302)
            .header("Location", format!("http://{storage}/lfs/{}", f.etag))
            .header("X-Repo-Commit", commit.clone())
            .header("X-Linked-Etag", format!("\"{}\"", f.etag))
            .header("X-Linked-Size", f.bytes.len().to_string())
            .header("ETag", format!("\"{}\"", hex_digest(f.etag.as_bytes(), 40)));
    }
    file_reply(st, &file, &f, Some(&commit), req.range.as_deref())
}

fn file_reply(
    st: &mut State,
    name: &str,
    f: &File,
    commit: Option<&str>,
    range: Option<&str>,
) -> Reply {
    let base = name.rsplit('/').next().unwrap_or(name).to_string();
    let weak = if st.weak_etags { "W/" } else { "" };
    let mut reply = Reply::new(200)
        .header("ETag", format!("{weak}\"{}\"", f.etag))
        .header("Accept-Ranges", "bytes")
        .header("Content-Type", "application/octet-stream");
    if let Some(c) = commit {
        reply = reply.header("X-Repo-Commit", c);
    }
    reply.body = f.bytes.clone();
    // a one-byte probe (`Range: bytes=0-0`, how clients read the metadata) is never cut
    let probe = range
        .and_then(|r| parse_range(r, f.bytes.len()))
        .is_some_and(|(s, e)| s == e);
    if let Some(n) = st.cut.get_mut(&base).filter(|_| !probe) {
        if *n > 0 {
            *n -= 1;
            reply.cut_at = Some(f.bytes.len() / 2);
        }
    }
    reply
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        _ => "Status",
    }
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` over a body of `len` bytes: the inclusive range.
fn parse_range(range: &str, len: usize) -> Option<(usize, usize)> {
    let spec = range.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: usize = b.parse().ok()?;
        (len.saturating_sub(n), len - 1)
    } else {
        let start: usize = a.parse().ok()?;
        let end = if b.is_empty() {
            len - 1
        } else {
            b.parse::<usize>().ok()?.min(len - 1)
        };
        (start, end)
    };
    (start <= end && start < len).then_some((start, end))
}

fn send(mut conn: TcpStream, method: &str, mut reply: Reply, range: Option<&str>) {
    let full = reply.body.clone();
    let mut body: &[u8] = &full;
    if reply.status == 200 && !full.is_empty() {
        if let Some(r) = range {
            match parse_range(r, full.len()) {
                Some((s, e)) => {
                    reply.status = 206;
                    reply.headers.push((
                        "Content-Range".into(),
                        format!("bytes {s}-{e}/{}", full.len()),
                    ));
                    body = &full[s..=e];
                }
                None => {
                    reply.status = 416;
                    reply
                        .headers
                        .push(("Content-Range".into(), format!("bytes */{}", full.len())));
                    body = &[];
                    reply.cut_at = None;
                }
            }
        }
    }
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    if method != "HEAD" {
        let n = reply.cut_at.unwrap_or(body.len()).min(body.len());
        let _ = conn.write_all(&body[..n]);
    }
    let _ = conn.flush();
    let _ = conn.shutdown(std::net::Shutdown::Write);
}

/// A hub repo id for a fixture model.
pub fn fixture_repo(name: &str) -> String {
    format!("test-org/{}", name.replace('_', "-"))
}

/// A fresh stand-in with fixture model `name` published on `main` of [`fixture_repo`]`(name)`:
/// the stand-in, the repo id and the commit.
pub fn with_fixture(name: &str) -> (HubStandIn, String, String) {
    let h = HubStandIn::start();
    let repo = fixture_repo(name);
    let commit = h.publish_dir(&repo, "main", &fixture_model(name), &[]);
    (h, repo, commit)
}

/// Path of a fixture model directory.
pub fn fixture_model(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}
