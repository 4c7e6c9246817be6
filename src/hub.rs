//! Models by name: a Hugging Face hub repo id (`org/name`) resolves to a snapshot directory in
//! the standard Hugging Face cache, downloading the files the model needs on first use.
//!
//! [`resolve_model`] is the one place that decides what a model argument means:
//!
//! 1. an existing local path is used as it is;
//! 2. otherwise a repo id (`org/name`) is looked up in the cache
//!    (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), laid out as
//!    Python's `huggingface_hub` lays it out: `models--org--name/refs/<revision>` holds the
//!    commit, `snapshots/<commit>/<file>` links to `blobs/<etag>`. A complete snapshot is used
//!    without any request, so the second run and every run after work offline;
//! 3. otherwise (and unless `HF_HUB_OFFLINE` is set) the files are downloaded from the hub
//!    (`$HF_ENDPOINT`, default `https://huggingface.co`), with `$HF_TOKEN` or the token file
//!    (`$HF_HOME/token`, as `huggingface-cli login` writes it) when there is one.
//!
//! Only what the model needs is fetched: `modules.json`, the sentence-transformers configs,
//! the `.json` files of the module folders it lists (e.g. `1_Pooling/config.json`), and in the
//! Transformer folder `config.json`, the tokenizer files and one weights file
//! (`model.safetensors`, else `pytorch_model.bin`), the weights last.
//!
//! All network traffic goes through `hf-hub`'s blocking (ureq) client: the repo listing
//! (`/api/models/{repo}/revision/{revision}`) and each file (`/{repo}/resolve/{revision}/{file}`:
//! a one-byte range request for `ETag` / `X-Repo-Commit` / size, then the transfer into
//! `blobs/<etag>`, a relative link from `snapshots/<commit>/<file>`, and `refs/<revision>`).
//! This module adds what `hf-hub` 0.4 lacks:
//!
//! * the choice of files (above) and the hub id / local path decision;
//! * cache reads with no request at all, also for a commit hash, also for a cache that Python
//!   wrote, and `HF_HUB_OFFLINE` (`hf-hub`'s `get` needs the network unless `refs/<revision>`
//!   exists; it has no offline mode);
//! * the environment as Python reads it: `HF_HUB_CACHE`, `XDG_CACHE_HOME`, `HF_TOKEN`,
//!   `HF_TOKEN_PATH` (`hf-hub` 0.4 reads only `HF_HOME`, `HF_ENDPOINT` and the token file);
//! * a completeness check: a snapshot lacking config, tokenizer or weights (an earlier run was
//!   interrupted) is completed, fetching only what it lacks;
//! * tidying: `hf-hub` leaves `blobs/<etag>.lock`, and after a failed transfer a
//!   `blobs/<etag>.part` it would resume from; both are removed, so an interrupted download
//!   leaves only complete blobs, and a retry starts the file afresh (a `.part` left by a
//!   killed process is removed before the next download: resuming appends unchecked, which a
//!   server ignoring the range would turn into a corrupt blob); and a blob that hf-hub
//!   names after a weak ETag (`blobs/W/<etag>`) is moved to `blobs/<etag>`, where Python
//!   looks;
//! * one progress bar on stderr, only for large files and only on a terminal;
//! * one-line errors naming the repo (not found, revision or file not found, token refused,
//!   hub unreachable, interrupted).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// Where and how [`resolve_model`] looks for a model. `None` fields follow the environment
/// (`HF_ENDPOINT`, `HF_HUB_CACHE` / `HF_HOME`, `HF_TOKEN` / token file, `HF_HUB_OFFLINE`), as
/// Python's `huggingface_hub` does.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// Branch, tag or commit (default `main`).
    pub revision: String,
    /// Hub base URL; `None`: `$HF_ENDPOINT`, else `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// Cache directory (the one holding `models--org--name`); `None`: from the environment.
    pub cache_dir: Option<PathBuf>,
    /// Access token; `None`: `$HF_TOKEN`, else the token file, else no token.
    pub token: Option<String>,
    /// Cache only, no request; `None`: `$HF_HUB_OFFLINE`.
    pub offline: Option<bool>,
    /// Draw a progress bar on stderr for large files (only when stderr is a terminal).
    pub progress: bool,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            revision: DEFAULT_REVISION.to_string(),
            endpoint: None,
            cache_dir: None,
            token: None,
            offline: None,
            progress: true,
        }
    }
}

/// The revision used when none is given.
pub const DEFAULT_REVISION: &str = "main";

#[cfg_attr(not(feature = "hub"), allow(dead_code))] // used by the downloader only
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Whether `s` is a hub model id of the form `org/name` (letters, digits, `-`, `_`, `.`; no
/// `--` or `..`; neither part starts or ends with `-` or `.`; at most 96 characters).
pub(crate) fn is_repo_id(s: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.contains("--")
            && !p.contains("..")
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
    };
    s.len() <= 96 && matches!(s.split_once('/'), Some((org, name)) if part_ok(org) && part_ok(name))
}

/// Resolve a model argument to a local directory: an existing path as it is; a repo id
/// (`org/name`) to its snapshot in the cache, downloaded first if it is not there (see the
/// module docs). Anything else comes back unchanged, for the loader to report.
///
/// ```
/// use std::path::Path;
/// use deberta_embed::hub::{resolve_model, HubOptions};
///
/// # fn main() -> deberta_embed::Result<()> {
/// // An existing directory is the model itself: no cache lookup, no request.
/// let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/st6_pool_max"));
/// assert_eq!(resolve_model(dir, &HubOptions::default())?, dir);
///
/// // An id that is not in the cache, offline: an error naming the repository.
/// let opts = HubOptions {
///     cache_dir: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/no-cache-here").into()),
///     offline: Some(true),
///     ..Default::default()
/// };
/// let err = resolve_model(Path::new("org/some-model"), &opts).unwrap_err();
/// assert!(matches!(err, deberta_embed::Error::Hub { ref repo, .. } if repo == "org/some-model"));
/// # Ok(())
/// # }
/// ```
pub fn resolve_model(spec: &Path, opts: &HubOptions) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    let Some(repo) = spec.to_str().filter(|s| is_repo_id(s)) else {
        return Ok(spec.to_path_buf());
    };
    let revision = opts.revision.trim();
    if revision.is_empty() || revision.contains("..") || revision.starts_with('/') {
        return Err(hub_err(repo, format!("invalid revision `{revision}`")));
    }
    let cache = opts.cache_dir.clone().unwrap_or_else(cache_dir);
    let repo_dir = cache.join(folder_name(repo));
    let cached = cached_snapshot(&repo_dir, revision);
    if let Some(dir) = &cached {
        if snapshot_missing(dir).is_none() {
            return Ok(dir.clone());
        }
    }
    if opts.offline.unwrap_or_else(offline_from_env) {
        let why = match &cached {
            Some(dir) => format!(
                "the cached snapshot {} lacks {}",
                dir.display(),
                snapshot_missing(dir).unwrap_or_default()
            ),
            None => format!(
                "revision `{revision}` is not in the cache ({})",
                cache.display()
            ),
        };
        return Err(hub_err(
            repo,
            format!("{why}, and HF_HUB_OFFLINE is set: run once online to download it"),
        ));
    }
    download(repo, revision, &cache, opts)
}

/// The cache directory: `$HF_HUB_CACHE` (or the older `$HUGGINGFACE_HUB_CACHE`), else
/// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    match env_nonempty("HF_HUB_CACHE").or_else(|| env_nonempty("HUGGINGFACE_HUB_CACHE")) {
        Some(p) => PathBuf::from(p),
        None => hf_home().join("hub"),
    }
}

fn hf_home() -> PathBuf {
    if let Some(p) = env_nonempty("HF_HOME") {
        return PathBuf::from(p);
    }
    let cache = match env_nonempty("XDG_CACHE_HOME") {
        Some(p) => PathBuf::from(p),
        None => std::env::home_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".cache"),
    };
    cache.join("huggingface")
}

fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// `HF_HUB_OFFLINE`, else the older `TRANSFORMERS_OFFLINE`, as huggingface_hub reads them.
fn offline_from_env() -> bool {
    env_nonempty("HF_HUB_OFFLINE")
        .or_else(|| env_nonempty("TRANSFORMERS_OFFLINE"))
        .is_some_and(|v| is_truthy(&v))
}

/// A boolean environment value as huggingface_hub reads one.
fn is_truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "on" | "yes" | "true"
    )
}

/// `models--org--name`, the repo's folder in the cache.
fn folder_name(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

fn hub_err(repo: &str, msg: impl Into<String>) -> Error {
    Error::Hub {
        repo: repo.to_string(),
        msg: msg.into(),
    }
}

/// Whether a commit id from the hub or a ref file can name a snapshot folder: one plain path
/// segment. (The hub's commits are 40 hex digits, but neither Python nor hf-hub insists.)
fn is_snapshot_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The snapshot folder a revision points to, if the cache has one: through `refs/<revision>`,
/// else the revision taken as a commit (Python writes no ref for a commit), as
/// huggingface_hub's `try_to_load_from_cache` looks.
fn cached_snapshot(repo_dir: &Path, revision: &str) -> Option<PathBuf> {
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        Ok(c) => c.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    if !is_snapshot_name(&commit) {
        return None;
    }
    let dir = repo_dir.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// The first file a loadable model lacks in `dir`, if any: `config.json`, a tokenizer and a
/// weights file in the Transformer folder, and the Pooling module's config. (Our downloads
/// fetch the weights last, so a snapshot with weights has the small files too.)
fn snapshot_missing(dir: &Path) -> Option<String> {
    let mut transformer = String::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("modules.json")) {
        for (ty, path) in modules_of(&text) {
            match ty.as_str() {
                "Transformer" => transformer = path,
                "Pooling" if !dir.join(&path).join("config.json").exists() => {
                    return Some(join_rel(&path, "config.json"));
                }
                _ => {}
            }
        }
    }
    let t = dir.join(&transformer);
    let any = |names: &[&str]| names.iter().any(|n| t.join(n).exists());
    if !any(&["config.json"]) {
        Some(join_rel(&transformer, "config.json"))
    } else if !any(&["tokenizer.json", "spm.model"]) {
        Some(join_rel(&transformer, "tokenizer.json"))
    } else if !any(&WEIGHTS) {
        Some(join_rel(&transformer, WEIGHTS[0]))
    } else {
        None
    }
}

/// Weights files, by preference.
const WEIGHTS: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// Small files of the Transformer folder, taken when the repo has them.
#[cfg_attr(not(feature = "hub"), allow(dead_code))] // used by the downloader only
const TRANSFORMER_FILES: [&str; 7] = [
    "config.json",
    "sentence_bert_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "spm.model",
];

/// Files of the repo root, taken when the repo has them.
#[cfg_attr(not(feature = "hub"), allow(dead_code))] // used by the downloader only
const ROOT_FILES: [&str; 3] = [
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
];

/// `(type's last segment, path)` of each module in a modules.json (nothing if it does not
/// parse: the loader reports that).
fn modules_of(text: &str) -> Vec<(String, String)> {
    let Ok(Value::Array(list)) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|m| {
            let ty = m.get("type")?.as_str()?;
            let last = ty.rsplit('.').next().unwrap_or(ty);
            let path = m.get("path").and_then(Value::as_str).unwrap_or("");
            Some((last.to_string(), path.trim_matches('/').to_string()))
        })
        .collect()
}

fn join_rel(dir: &str, file: &str) -> String {
    if dir.is_empty() {
        file.to_string()
    } else {
        format!("{dir}/{file}")
    }
}

/// Which files of a repo listing the model needs (the weights last), given modules.json's
/// text when the repo has one; or the name of a required file the repo lacks.
#[cfg_attr(not(feature = "hub"), allow(dead_code))] // used by the downloader only
fn plan(siblings: &[String], modules: Option<&str>) -> std::result::Result<Vec<String>, String> {
    let has = |f: &str| siblings.iter().any(|s| s == f);
    let mut files: Vec<String> = ROOT_FILES
        .iter()
        .filter(|f| has(f))
        .map(|f| f.to_string())
        .collect();
    let mut transformer = String::new();
    for (ty, path) in modules.map(modules_of).unwrap_or_default() {
        if ty == "Transformer" {
            transformer = path;
        } else if !path.is_empty() {
            // the module's own configs (1_Pooling/config.json, ...), never its weights
            let prefix = format!("{path}/");
            files.extend(
                siblings
                    .iter()
                    .filter(|s| {
                        s.strip_prefix(&prefix)
                            .is_some_and(|rest| !rest.contains('/') && rest.ends_with(".json"))
                    })
                    .cloned(),
            );
        }
    }
    let in_t = |f: &str| join_rel(&transformer, f);
    if !has(&in_t("config.json")) {
        return Err(in_t("config.json"));
    }
    files.extend(TRANSFORMER_FILES.iter().map(|f| in_t(f)).filter(|f| has(f)));
    if !has(&in_t("tokenizer.json")) && !has(&in_t("spm.model")) {
        return Err(format!("{} (or spm.model)", in_t("tokenizer.json")));
    }
    match WEIGHTS.iter().map(|f| in_t(f)).find(|f| has(f)) {
        Some(w) => files.push(w),
        None => return Err(format!("{} (or {})", in_t(WEIGHTS[0]), in_t(WEIGHTS[1]))),
    }
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.clone()));
    Ok(files)
}

#[cfg(not(feature = "hub"))]
fn download(repo: &str, revision: &str, cache: &Path, _opts: &HubOptions) -> Result<PathBuf> {
    Err(hub_err(
        repo,
        format!(
            "revision `{revision}` is not in the cache ({}), and this build cannot download (it lacks the `hub` feature)",
            cache.display()
        ),
    ))
}

#[cfg(feature = "hub")]
fn download(repo: &str, revision: &str, cache: &Path, opts: &HubOptions) -> Result<PathBuf> {
    net::download(repo, revision, cache, opts)
}

#[cfg(feature = "hub")]
mod net {
    use std::collections::HashSet;
    use std::io::IsTerminal;
    use std::path::{Path, PathBuf};

    use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
    use hf_hub::api::Progress;
    use hf_hub::{Cache, Repo, RepoType};

    use super::{folder_name, hub_err, is_snapshot_name, plan, HubOptions};
    use crate::error::{Error, Result};

    /// Files at least this large get a progress bar.
    const BAR_BYTES: usize = 4 << 20;

    /// Everything one download needs.
    struct Session<'a> {
        repo: &'a str,
        revision: &'a str,
        endpoint: String,
        token: Option<String>,
        api: ApiRepo,
        repo_dir: PathBuf,
        progress: bool,
    }

    pub(super) fn download(
        repo: &str,
        revision: &str,
        cache: &Path,
        opts: &HubOptions,
    ) -> Result<PathBuf> {
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| super::env_nonempty("HF_ENDPOINT"))
            .unwrap_or_else(|| super::DEFAULT_ENDPOINT.to_string())
            .trim()
            .trim_end_matches('/')
            .to_string();
        let token = opts.token.clone().or_else(token_from_env);
        // `from_cache`, not `new` / `from_env`: those read only HF_HOME and panic without a home
        // directory; the token is ours too (hf-hub reads only the token file next to the cache).
        let api = ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
            .with_endpoint(endpoint.clone())
            .with_token(token.clone())
            .with_progress(false)
            .with_retries(0)
            .with_user_agent("deberta-embed", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| hub_err(repo, format!("cannot set up the hub client: {e}")))?;
        let s = Session {
            repo,
            revision,
            endpoint,
            token,
            api: api.repo(Repo::with_revision(
                repo.to_string(),
                RepoType::Model,
                revision.to_string(),
            )),
            repo_dir: cache.join(folder_name(repo)),
            progress: opts.progress && std::io::stderr().is_terminal(),
        };
        let (commit, siblings) = s.info()?;
        let snapshot = s.repo_dir.join("snapshots").join(&commit);
        let modules = if siblings.iter().any(|f| f == "modules.json") {
            let p = s.fetch(&snapshot, "modules.json")?;
            Some(std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?)
        } else {
            None
        };
        let files = plan(&siblings, modules.as_deref()).map_err(|missing| {
            s.err(format!(
                "{missing} not found at revision `{revision}`: not a DeBERTa model repository"
            ))
        })?;
        // the weights come last: check the configs first, so that an unsupported model (a
        // Dense module, a config this engine refuses) fails before the large download
        let Some((weights, small)) = files.split_last() else {
            return Err(s.err("no file to download")); // plan() always names the weights
        };
        for f in small {
            s.fetch(&snapshot, f)?;
        }
        crate::config::PipelineConfig::load(&snapshot)?;
        s.fetch(&snapshot, weights)?;
        if revision == commit {
            // hf-hub writes `refs/<revision>` even for a commit hash; Python writes no ref then
            // (a snapshot named by its commit needs none), and neither do we.
            let r = s.repo_dir.join("refs").join(revision);
            if std::fs::read_to_string(&r).is_ok_and(|c| c.trim() == commit) {
                let _ = std::fs::remove_file(&r);
                let _ = std::fs::remove_dir(s.repo_dir.join("refs"));
            }
        }
        Ok(snapshot)
    }

    /// `$HF_TOKEN` (or the older `$HUGGING_FACE_HUB_TOKEN`), else the token file
    /// (`$HF_TOKEN_PATH`, else `$HF_HOME/token`).
    fn token_from_env() -> Option<String> {
        if let Some(t) = super::env_nonempty("HF_TOKEN")
            .or_else(|| super::env_nonempty("HUGGING_FACE_HUB_TOKEN"))
        {
            return Some(t.trim().to_string());
        }
        let path = super::env_nonempty("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| super::hf_home().join("token"));
        let t = std::fs::read_to_string(path).ok()?;
        let t = t.trim();
        (!t.is_empty()).then(|| t.to_string())
    }

    impl Session<'_> {
        fn err(&self, msg: impl Into<String>) -> Error {
            hub_err(self.repo, msg)
        }

        /// The commit the revision points to, and the repo's file list.
        fn info(&self) -> Result<(String, Vec<String>)> {
            let info = self.api.info().map_err(|e| self.api_error(e, None))?;
            if !is_snapshot_name(&info.sha) {
                return Err(self.err(format!(
                    "unexpected answer from {}: `{}` is not a commit id",
                    self.endpoint, info.sha
                )));
            }
            Ok((
                info.sha,
                info.siblings.into_iter().map(|s| s.rfilename).collect(),
            ))
        }

        /// `snapshot/<file>`: as it is when the snapshot has it, else downloaded by hf-hub
        /// (into `blobs/<etag>`, linked from `snapshots/<commit>/<file>`, `refs/<revision>`
        /// written). hf-hub's `.lock` next to the blob is removed after, and so is its `.part`
        /// when the transfer failed: nothing half-written stays in the cache.
        fn fetch(&self, snapshot: &Path, file: &str) -> Result<PathBuf> {
            let pointer = snapshot.join(file);
            if pointer.exists() {
                return Ok(pointer);
            }
            let blobs = self.repo_dir.join("blobs");
            clear_stale_parts(&blobs);
            let before = names_in(&blobs);
            let bar = Bar {
                show: self.progress,
                label: format!("{file} from {}", self.repo),
                bar: None,
            };
            let got = self.api.download_with_progress(file, bar);
            // (Not when another process holds the lock: the files are its own.)
            if !matches!(got, Err(ApiError::LockAcquisition(_))) {
                for name in names_in(&blobs).difference(&before) {
                    if name.ends_with(".lock") || (got.is_err() && name.ends_with(".part")) {
                        let _ = std::fs::remove_file(blobs.join(name));
                    }
                }
            }
            let path = got.map_err(|e| self.api_error(e, Some(file)))?;
            if path != pointer {
                // X-Repo-Commit named another commit than the listing: the branch moved
                return Err(self.err(format!(
                    "revision `{}` moved to another commit during the download: run again",
                    self.revision
                )));
            }
            flatten_blob(&blobs, &pointer)?;
            Ok(path)
        }

        /// One line for whatever hf-hub reports.
        fn api_error(&self, e: ApiError, file: Option<&str>) -> Error {
            let what = file.map_or("the repository listing".to_string(), |f| f.to_string());
            match e {
                ApiError::RequestError(e) => self.request_error(*e, file),
                ApiError::IoError(e) if file.is_some() => self.err(format!(
                    "download of {what} interrupted ({e}): nothing partial was kept; run again"
                )),
                ApiError::IoError(e) => self.err(format!(
                    "unexpected answer from {} for {what}: {e}",
                    self.endpoint
                )),
                ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => self.err(format!(
                    "the answer from {} for {what} lacks a valid {h} header (is HF_ENDPOINT a Hugging Face hub?)",
                    self.endpoint
                )),
                ApiError::LockAcquisition(p) => self.err(format!(
                    "another process is downloading {what} (lock {}): run again when it is done",
                    p.display()
                )),
                other => self.err(format!("download of {what} failed: {other}")),
            }
        }

        /// One line for a failed request: not found, refused, unreachable.
        fn request_error(&self, e: ureq::Error, file: Option<&str>) -> Error {
            let (code, resp) = match e {
                ureq::Error::Status(code, resp) => (code, resp),
                ureq::Error::Transport(t) => {
                    return self.err(format!(
                        "cannot reach the hub at {}: {t} (with HF_HUB_OFFLINE=1 only the cache is used)",
                        self.endpoint
                    ))
                }
            };
            let url = resp.get_url().to_string();
            let error_code = resp.header("x-error-code").unwrap_or("").to_string();
            let message = resp
                .header("x-error-message")
                .map(|m| format!(" ({})", m.trim()))
                .unwrap_or_default();
            let rev = self.revision;
            match (error_code.as_str(), code) {
                ("RevisionNotFound", _) => {
                    self.err(format!("revision `{rev}` not found (HTTP {code}){message}"))
                }
                ("EntryNotFound", _) | ("", 404) if file.is_some() => self.err(format!(
                    "file {} not found at revision `{rev}` (HTTP {code}){message}",
                    file.unwrap_or_default()
                )),
                ("GatedRepo", _) => self.err(format!(
                    "access is restricted (gated repository, HTTP {code}){message}: accept its conditions on the hub and set HF_TOKEN"
                )),
                ("RepoNotFound", _) | (_, 404) => {
                    let hint = if self.token.is_some() {
                        "or the token has no access to it"
                    } else {
                        "if it is private, set HF_TOKEN"
                    };
                    self.err(format!(
                        "repository not found on {} (HTTP {code}; {hint}){message}",
                        self.endpoint
                    ))
                }
                (_, 401 | 403) if self.token.is_some() => self.err(format!(
                    "the hub refused the access token (HTTP {code}){message}: check HF_TOKEN or the token file"
                )),
                (_, 401 | 403) => self.err(format!(
                    "the hub asks for authentication (HTTP {code}){message}: set HF_TOKEN"
                )),
                _ => self.err(format!("{url}: HTTP {code}{message}")),
            }
        }
    }

    /// The files in `dir` and in its subfolders one level down (hf-hub names a blob after the
    /// ETag, so a weak `W/"x"` lands in `blobs/W/`), as relative paths; none if `dir` does not
    /// exist yet.
    fn names_in(dir: &Path) -> HashSet<String> {
        let mut out = HashSet::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                for sub in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                    out.insert(format!("{name}/{}", sub.file_name().to_string_lossy()));
                }
            } else {
                out.insert(name);
            }
        }
        out
    }

    /// Remove the `.part` files that a process killed mid-transfer left (those whose lock no
    /// process holds). hf-hub would resume from one with a range request and append what comes
    /// back, unchecked: a server that ignores the range, or a `.part` that is not a prefix of
    /// the file, would leave a corrupt blob. A retry starts the file afresh instead.
    fn clear_stale_parts(blobs: &Path) {
        for name in names_in(blobs) {
            let Some(stem) = name.strip_suffix(".part") else {
                continue;
            };
            let lock_path = blobs.join(format!("{stem}.lock"));
            let Ok(lock) = std::fs::File::create(&lock_path) else {
                continue;
            };
            if lock.try_lock().is_ok() {
                let _ = std::fs::remove_file(blobs.join(&name));
                drop(lock);
                let _ = std::fs::remove_file(&lock_path);
            }
        }
    }

    /// Move a blob that hf-hub put below `blobs/` (`blobs/W/x` for a weak ETag `W/"x"`) to
    /// `blobs/x`, where Python's huggingface_hub, which drops the `W/`, looks for it, and point
    /// the snapshot's link there.
    fn flatten_blob(blobs: &Path, pointer: &Path) -> Result<()> {
        let Ok(target) = std::fs::read_link(pointer) else {
            return Ok(()); // a copy, not a link (where symlinks are unavailable)
        };
        let parts: Vec<_> = target.components().collect();
        let Some(at) = parts.iter().rposition(|c| c.as_os_str() == "blobs") else {
            return Ok(());
        };
        if at + 2 >= parts.len() {
            return Ok(()); // already `.../blobs/<etag>`
        }
        let Some(name) = target.file_name() else {
            return Ok(());
        };
        let nested = pointer.parent().unwrap_or(Path::new(".")).join(&target);
        let flat = blobs.join(name);
        if flat.is_file() {
            std::fs::remove_file(&nested).map_err(|e| Error::io(&nested, e))?;
        } else {
            std::fs::rename(&nested, &flat).map_err(|e| Error::io(&flat, e))?;
        }
        let mut relinked: PathBuf = parts[..=at].iter().collect();
        relinked.push(name);
        std::fs::remove_file(pointer).map_err(|e| Error::io(pointer, e))?;
        #[cfg(unix)]
        std::os::unix::fs::symlink(&relinked, pointer).map_err(|e| Error::io(pointer, e))?;
        #[cfg(windows)]
        std::os::windows::fs::symlink_file(&relinked, pointer)
            .or_else(|_| std::fs::copy(&flat, pointer).map(|_| ()))
            .map_err(|e| Error::io(pointer, e))?;
        // the emptied `blobs/W/` (its lock files are gone by now)
        if let Some(dir) = nested.parent() {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }

    /// hf-hub's progress hook: a bar on stderr for files of [`BAR_BYTES`] or more, cleared when
    /// the transfer ends (also when it fails, so that the error stays one line).
    struct Bar {
        show: bool,
        label: String,
        bar: Option<indicatif::ProgressBar>,
    }

    impl Progress for Bar {
        fn init(&mut self, size: usize, _filename: &str) {
            // hf-hub calls this once before the transfer and once as it starts
            if let Some(b) = &self.bar {
                b.set_length(size as u64);
                b.set_position(0);
                return;
            }
            if self.show && size >= BAR_BYTES {
                let b = indicatif::ProgressBar::new(size as u64);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b.set_message(self.label.clone());
                self.bar = Some(b);
            }
        }

        fn update(&mut self, size: usize) {
            if let Some(b) = &self.bar {
                b.inc(size as u64);
            }
        }

        fn finish(&mut self) {
            if let Some(b) = self.bar.take() {
                b.finish_and_clear();
            }
        }
    }

    impl Drop for Bar {
        fn drop(&mut self) {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_recognised() {
        for ok in [
            "bobox/DeBERTaV3-xSmall-SentenceTransformer-0.03",
            "microsoft/deberta-v3-xsmall",
            "a/b",
            "org_1/name.v2",
        ] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in [
            "deberta",
            "a/b/c",
            "/abs/path",
            "./org/name",
            "org/",
            "/name",
            "org/na--me",
            "org/na..me",
            "-org/name",
            "org/name.",
            "org/na me",
            "",
        ] {
            assert!(!is_repo_id(bad), "{bad}");
        }
        assert!(!is_repo_id(&format!("org/{}", "x".repeat(100))));
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plan_takes_only_what_the_model_needs_weights_last() {
        let siblings = names(&[
            ".gitattributes",
            "README.md",
            "1_Pooling/config.json",
            "2_Dense/config.json",
            "2_Dense/model.safetensors",
            "config.json",
            "config_sentence_transformers.json",
            "model.safetensors",
            "pytorch_model.bin",
            "modules.json",
            "onnx/model.onnx",
            "sentence_bert_config.json",
            "special_tokens_map.json",
            "spm.model",
            "tokenizer.json",
            "tokenizer_config.json",
        ]);
        let modules = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#;
        let got = plan(&siblings, Some(modules)).unwrap();
        assert_eq!(
            got,
            names(&[
                "modules.json",
                "config_sentence_transformers.json",
                "sentence_bert_config.json",
                "1_Pooling/config.json",
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "spm.model",
                "model.safetensors",
            ])
        );
    }

    #[test]
    fn plan_handles_a_transformer_subfolder_and_bin_weights() {
        let siblings = names(&[
            "modules.json",
            "0_Transformer/config.json",
            "0_Transformer/pytorch_model.bin",
            "0_Transformer/spm.model",
            "1_Pooling/config.json",
        ]);
        let modules = r#"[{"path":"0_Transformer","type":"sentence_transformers.models.Transformer"},
            {"path":"1_Pooling/","type":"sentence_transformers.models.Pooling"}]"#;
        let got = plan(&siblings, Some(modules)).unwrap();
        assert_eq!(
            got,
            names(&[
                "modules.json",
                "1_Pooling/config.json",
                "0_Transformer/config.json",
                "0_Transformer/spm.model",
                "0_Transformer/pytorch_model.bin",
            ])
        );
    }

    #[test]
    fn plan_names_what_is_missing() {
        let no_weights = names(&["config.json", "tokenizer.json"]);
        assert!(plan(&no_weights, None)
            .unwrap_err()
            .contains("model.safetensors"));
        let no_config = names(&["model.safetensors", "tokenizer.json"]);
        assert_eq!(plan(&no_config, None).unwrap_err(), "config.json");
        let no_tok = names(&["config.json", "model.safetensors"]);
        assert!(plan(&no_tok, None).unwrap_err().contains("tokenizer.json"));
    }

    #[test]
    fn offline_values_follow_huggingface_hub() {
        // The parsing only; the environment itself is left alone (tests share it).
        for (v, want) in [
            ("1", true),
            ("TRUE", true),
            (" yes ", true),
            ("On", true),
            ("0", false),
            ("false", false),
            ("", false),
        ] {
            assert_eq!(is_truthy(v), want, "{v:?}");
        }
    }
}
