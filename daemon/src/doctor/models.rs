//! Model directories (layout, `manifest.sha256`) and the embedding model.

use std::path::{Component, Path, PathBuf};

use super::{Check, Ctx, EMBED_MODEL, MANIFEST};
use crate::engine::ModelSpec;
use crate::util::sha256_file;

/// One line of a `manifest.sha256`: the hex digest and the path relative to the model directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    pub sha256: String,
    pub path: PathBuf,
}

/// Parse `sha256sum` output (`HASH  path` or `HASH *path`; `./` prefixes allowed). Paths must
/// stay inside the model directory.
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestEntry>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (hash, rest) = line
            .split_once(' ')
            .ok_or_else(|| format!("line {n}: expected `SHA256  PATH`"))?;
        let path = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .ok_or_else(|| format!("line {n}: expected two spaces or ` *` after the hash"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("line {n}: `{hash}` is not a sha256 digest"));
        }
        let p = Path::new(path);
        if path.is_empty()
            || p.components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "line {n}: `{path}` must be a relative path inside the model directory"
            ));
        }
        out.push(ManifestEntry {
            sha256: hash.to_ascii_lowercase(),
            path: p
                .components()
                .filter(|c| !matches!(c, Component::CurDir))
                .collect(),
        });
    }
    if out.is_empty() {
        return Err("lists no files".into());
    }
    Ok(out)
}

/// Result of checking a directory against its manifest.
#[derive(Debug, PartialEq, Eq)]
pub enum ManifestState {
    /// No `manifest.sha256`.
    Absent,
    /// All listed files present (and, when hashing, matching): how many.
    Verified { files: usize, hashed: bool },
    /// Missing or different files, or an unreadable manifest.
    Bad(String),
}

pub fn verify_manifest(dir: &Path, hash: bool) -> ManifestState {
    let file = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ManifestState::Absent,
        Err(e) => return ManifestState::Bad(format!("{}: {e}", file.display())),
    };
    let entries = match parse_manifest(&text) {
        Ok(e) => e,
        Err(e) => return ManifestState::Bad(format!("{}: {e}", file.display())),
    };
    let mut bad = Vec::new();
    for e in &entries {
        let p = dir.join(&e.path);
        let problem = match (p.is_file(), hash) {
            (false, _) => Some("missing"),
            (true, false) => None,
            (true, true) => match sha256_file(&p) {
                Ok(h) if h == e.sha256 => None,
                Ok(_) => Some("sha256 differs"),
                Err(_) => Some("unreadable"),
            },
        };
        if let Some(what) = problem {
            bad.push(format!("{} ({what})", e.path.display()));
        }
    }
    if bad.is_empty() {
        ManifestState::Verified {
            files: entries.len(),
            hashed: hash,
        }
    } else {
        let n = bad.len();
        bad.truncate(4);
        ManifestState::Bad(format!(
            "{n} of {} files in {MANIFEST} do not match: {}",
            entries.len(),
            bad.join(", ")
        ))
    }
}

fn manifest_fix(dir: &Path) -> String {
    format!(
        "cd {} && find . -type f ! -name {MANIFEST} -printf '%P\\0' | sort -z | xargs -0 sha256sum > {MANIFEST}",
        dir.display()
    )
}

/// One model directory: its spec plus the manifest.
pub(super) fn check_model(name: String, dir: &Path, hash: bool, note: &str) -> Check {
    let spec = match ModelSpec::read(dir) {
        Ok(s) => s,
        Err(e) => {
            return Check::fail(
                name,
                e.to_string(),
                "copy the complete model directory again (see README: Models)",
            )
        }
    };
    let what = format!(
        "{} ({} layout, {}, {} layers, context {}){note}",
        dir.display(),
        spec.layout.as_str(),
        spec.arch,
        spec.num_layers,
        spec.context_length
    );
    match verify_manifest(dir, hash) {
        ManifestState::Verified { files, hashed } => {
            let how = if hashed { "sha256 verified" } else { "present (not hashed)" };
            Check::ok(name, format!("{what}; {files} files {how}"))
        }
        ManifestState::Absent => Check::warn(
            name,
            format!("{what}; no {MANIFEST}: files not verified"),
            manifest_fix(dir),
        ),
        ManifestState::Bad(msg) => Check::fail(
            name,
            format!("{what}; {msg}"),
            "copy the model again from its source (scripts/install --models DIR verifies while copying)",
        ),
    }
}

pub(super) fn check_models(ctx: &Ctx) -> Vec<Check> {
    let hash = ctx.opts.verify_hashes;
    if !ctx.opts.models.is_empty() {
        return ctx
            .opts
            .models
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let note = if i == 0 {
                    ""
                } else {
                    " (serve loads only the first --model)"
                };
                check_model(format!("model:{}", dir_name(d)), d, hash, note)
            })
            .collect();
    }
    let root = ctx.state_dir.join("models");
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(&root) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && dir_name(p) != EMBED_MODEL)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return vec![Check::warn(
                "models",
                format!("cannot list {}: {e}", root.display()),
                "run edgeseek doctor as root",
            )]
        }
        Err(_) => Vec::new(),
    };
    dirs.sort();
    // engine.model, then engine.models: every one the daemon would load at start.
    let chosen: Vec<(PathBuf, &str)> = ctx
        .config
        .model_dir(&ctx.state_dir)
        .map(|d| (d, "engine.model"))
        .into_iter()
        .chain(
            ctx.config
                .more_model_dirs(&ctx.state_dir)
                .into_iter()
                .map(|d| (d, "engine.models")),
        )
        .collect();
    if !chosen.is_empty() {
        let mut out: Vec<Check> = chosen
            .iter()
            .map(|(d, key)| {
                let name = format!("model:{}", dir_name(d));
                if d.is_dir() {
                    check_model(name, d, hash, &format!(" (served: {key})"))
                } else {
                    Check::fail(
                        name,
                        format!("{key}: {} is not a directory", d.display()),
                        format!(
                            "copy the model there (scripts/install --models DIR) or correct {key}"
                        ),
                    )
                }
            })
            .collect();
        let served = |d: &PathBuf| {
            chosen
                .iter()
                .any(|(c, _)| c.canonicalize().ok() == d.canonicalize().ok())
        };
        out.extend(dirs.iter().filter(|d| !served(d)).map(|d| {
            check_model(
                format!("model:{}", dir_name(d)),
                d,
                hash,
                " (not served: engine.model and engine.models name others)",
            )
        }));
        return out;
    }
    if dirs.is_empty() {
        let detail = format!("no model directory under {}", root.display());
        let fix = format!(
            "scripts/install --models DIR (or copy a model to {}/<name>/; see README: Models)",
            root.display()
        );
        return vec![if ctx.opts.paths.dev {
            Check::warn(
                "models",
                format!("{detail} (--dev: pass --model DIR to check one)"),
                fix,
            )
        } else {
            Check::fail(
                "models",
                format!("{detail}: the daemon has nothing to serve"),
                fix,
            )
        }];
    }
    dirs.iter()
        .enumerate()
        .map(|(i, d)| {
            let note = if dirs.len() == 1 {
                ""
            } else if i == 0 {
                " (served: first by name)"
            } else {
                " (not served: one model per daemon)"
            };
            check_model(format!("model:{}", dir_name(d)), d, hash, note)
        })
        .collect()
}

fn dir_name(p: &Path) -> String {
    p.canonicalize()
        .unwrap_or_else(|_| p.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Any `*.onnx` in `dir` or one level below (exports keep it in `onnx/`).
fn has_onnx(dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            std::fs::read_dir(&p).is_ok_and(|rd| {
                rd.flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "onnx"))
            })
        } else {
            p.extension().is_some_and(|x| x == "onnx")
        }
    })
}

pub(super) fn check_embeddings(ctx: &Ctx) -> Check {
    const NAME: &str = "embeddings";
    let mut candidates = vec![ctx.state_dir.join("models").join(EMBED_MODEL)];
    candidates.extend(ctx.host.embed_dirs.iter().cloned());
    let Some(dir) = candidates.iter().find(|d| d.is_dir()) else {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return Check::warn(
            NAME,
            format!(
                "{EMBED_MODEL} not found (tried {}): knowledge-base vector search is unavailable",
                tried.join(", ")
            ),
            "install a package built with the embedding model (scripts/setup fetches it into .runtime/models), or copy it to <state_dir>/models/all-minilm-l6-v2",
        );
    };
    let mut missing = Vec::new();
    if !dir.join("tokenizer.json").is_file() {
        missing.push("tokenizer.json");
    }
    if !has_onnx(dir) {
        missing.push("*.onnx");
    }
    if !missing.is_empty() {
        return Check::fail(
            NAME,
            format!("{}: missing {}", dir.display(), missing.join(", ")),
            "copy the embedding model directory again",
        );
    }
    match verify_manifest(dir, ctx.opts.verify_hashes) {
        ManifestState::Verified { files, .. } => {
            Check::ok(NAME, format!("{}; {files} files verified", dir.display()))
        }
        ManifestState::Absent => Check::warn(
            NAME,
            format!("{}; no {MANIFEST}: files not verified", dir.display()),
            manifest_fix(dir),
        ),
        ManifestState::Bad(msg) => Check::fail(
            NAME,
            format!("{}; {msg}", dir.display()),
            "copy the embedding model directory again",
        ),
    }
}
