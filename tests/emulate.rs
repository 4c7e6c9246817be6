//! The CUDA kernels without a GPU: `scripts/emulate-kernels.sh` compiles `kernels/*.cu` for the
//! host with the emulator in `kernels/emu` (CUDA threads as fibers, `__syncthreads` a barrier,
//! shuffles / `ldmatrix` / `mma.sync` as warp collectives, `cp.async` landing at its
//! `wait_group`) and checks every kernel against a CPU reference at the shapes of
//! tests/gpu.rs. Needs a C++17 compiler (`g++` or `$CXX`) and nothing from CUDA, so it runs in
//! every `cargo test`, and in CI.
//!
//! The emulator is checked too: mutants of the real kernel sources (a barrier removed, an
//! index shifted, a `cp.async` wait one stage late) must fail their check.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The kernel entry points as build.rs reads them from `kernels/*.cu` (the list the CUDA backend
/// loads and launches by: `backend::cuda::launch::names`).
mod names {
    include!(concat!(env!("OUT_DIR"), "/kernel_names.rs"));
}

/// The two tests share the build directory: one at a time.
static BUILD: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn build_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("emulator")
}

/// Run the script; returns (success, stdout + stderr).
fn script(args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(root().join("scripts/emulate-kernels.sh"))
        .args(args)
        .env("EMU_BUILD_DIR", build_dir())
        .current_dir(root())
        .output()
        .expect("cannot run bash scripts/emulate-kernels.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The kernel entry points the emulator compiled: the `extern "C"` (unmangled) functions
/// defined in its kernel objects.
fn entry_points(dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for e in std::fs::read_dir(dir).expect("emulator build directory") {
        let p = e.unwrap().path();
        let file = p.file_name().unwrap().to_string_lossy().into_owned();
        if !(file.starts_with("k_") && file.ends_with(".o")) {
            continue;
        }
        let out = Command::new("nm")
            .args(["--defined-only", "-g"])
            .arg(&p)
            .output()
            .expect("cannot run nm");
        assert!(out.status.success(), "nm {}", p.display());
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 3 && f[1] == "T" && !f[2].starts_with("_Z") {
                names.insert(f[2].to_string());
            }
        }
    }
    names
}

#[test]
fn every_kernel_matches_its_reference_under_emulation() {
    let _lock = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let (ok, out) = script(&[]);
    // the case lines are the evidence: show them (cargo prints them for a failing test, or
    // with --nocapture)
    println!("{out}");
    let last = out.lines().rev().find(|l| !l.is_empty()).unwrap_or("");
    let (passed, failed) = last
        .split_once(" passed, ")
        .and_then(|(p, f)| {
            Some((
                p.parse::<usize>().ok()?,
                f.strip_suffix(" failed")?.parse::<usize>().ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("no `N passed, M failed` line at the end:\n{out}"));
    assert!(
        ok && failed == 0,
        "{failed} emulated kernel checks failed:\n{out}"
    );
    let pass_lines: Vec<&str> = out.lines().filter(|l| l.starts_with("PASS ")).collect();
    assert_eq!(pass_lines.len(), passed, "PASS lines vs the summary");
    // every kernel entry point of kernels/*.cu has at least one passing case
    let entries = entry_points(&build_dir());
    assert!(
        entries.len() >= 30,
        "kernel entry points found: {entries:?}"
    );
    let checked: BTreeSet<&str> = pass_lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let unchecked: Vec<&String> = entries
        .iter()
        .filter(|e| !checked.contains(e.as_str()))
        .collect();
    assert!(
        unchecked.is_empty(),
        "kernels without an emulator check: {unchecked:?}"
    );
    // the names the CUDA backend launches by are exactly the compiled entry points, and each
    // is written out in kernels/*.cu (no name pasted together by the preprocessor)
    let listed: BTreeSet<String> = names::ALL.iter().map(|s| s.to_string()).collect();
    assert_eq!(listed.len(), names::ALL.len(), "duplicate kernel names");
    assert_eq!(
        listed, entries,
        "build.rs's kernel list vs the compiled entry points"
    );
    let sources: Vec<String> = std::fs::read_dir(root().join("kernels"))
        .expect("kernels/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for name in names::ALL {
        let literal = sources.iter().any(|s| {
            s.match_indices(name).any(|(i, _)| {
                let word =
                    |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                !word(s[..i].chars().next_back()) && !word(s[i + name.len()..].chars().next())
            })
        });
        assert!(
            literal,
            "kernel `{name}` is not written out in kernels/*.cu"
        );
    }
}

#[test]
fn kernel_mutants_fail_under_emulation() {
    let _lock = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let (ok, out) = script(&["--mutants"]);
    println!("{out}");
    let caught = out.lines().filter(|l| l.contains(": caught (")).count();
    assert!(ok, "a mutant kernel passed the emulator check:\n{out}");
    assert!(
        caught >= 14 && out.contains(&format!("{caught} mutants, 0 missed")),
        "{out}"
    );
}
