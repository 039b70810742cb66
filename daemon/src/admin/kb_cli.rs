//! `edgeseek kb …`: knowledge-base administration over the admin socket.
//!
//! Documents travel inside the admin request (base64 in the JSON line): the daemon runs as its
//! own user behind `ProtectHome=`/`ProtectSystem=`, so it could not read the admin's files by
//! path. The daemon parses, chunks, embeds and commits each document before it answers, so a
//! success line means the document is stored.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::Value;

use super::cli::{
    call_timeout, connect, out, print_list, req, scalar, AdminCliError, Conn, Target,
};
use crate::api::wire::{
    self,
    admin::{AdminRequest as Req, IngestLine},
};
use crate::kb::DocKind;

/// Ingesting one large PDF (parse, hundreds of chunks embedded on CPU) can take minutes.
const INGEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest file sent; the daemon applies its own limit too.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Args, Debug)]
pub struct KbArgs {
    #[command(subcommand)]
    pub cmd: KbCmd,
}

#[derive(Subcommand, Debug)]
pub enum KbCmd {
    /// Add documents (txt, md, html, pdf, docx; directories recursively). A file whose name is
    /// already in the collection replaces the stored version.
    Ingest(IngestArgs),
    /// List collections with their document and chunk counts
    Collections(super::cli::JsonFlag),
    /// Create a collection
    Create(NameArg),
    /// Delete a collection and every document in it
    Delete(NameArg),
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Files or directories
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// Target collection (created if it does not exist)
    #[arg(long, short = 'c', value_name = "NAME")]
    pub collection: String,
    /// Print one JSON object per file
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct NameArg {
    /// Collection name
    #[arg(value_name = "NAME")]
    pub name: String,
}

pub fn kb(t: &Target, a: &KbArgs) -> Result<(), AdminCliError> {
    match &a.cmd {
        KbCmd::Ingest(i) => ingest(t, i),
        KbCmd::Collections(f) => collections(t, f.json),
        KbCmd::Create(n) => {
            let v = request(t, req(&Req::KbCreate { name: &n.name }))?;
            out(&format!("created collection {}\n", scalar(&v["name"])))
        }
        KbCmd::Delete(n) => {
            request(t, req(&Req::KbDelete { name: &n.name }))?;
            out(&format!("deleted collection {}\n", n.name))
        }
    }
}

fn request(t: &Target, req: Value) -> Result<Value, AdminCliError> {
    match connect(t)? {
        Conn::Up(s) => call_timeout(t, s, req, INGEST_TIMEOUT),
        Conn::Down => Err(AdminCliError::NotRunning(t.socket.clone())),
    }
}

fn collections(t: &Target, json_out: bool) -> Result<(), AdminCliError> {
    let v = request(t, req(&Req::KbCollections))?;
    if json_out {
        return out(&format!("{v}\n"));
    }
    print_list(
        &v,
        &["NAME", "DOCUMENTS", "CHUNKS"],
        "no collections (create one with `edgeseek kb create NAME`)",
        |c| {
            vec![
                scalar(&c["name"]),
                scalar(&c["documents"]),
                scalar(&c["chunks"]),
            ]
        },
    )
}

/// Every file under `paths` with a supported extension, sorted; unsupported files are
/// returned separately so the summary can name them.
fn collect(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for p in paths {
        walk(p, &mut files, &mut skipped, true);
    }
    files.sort();
    files.dedup();
    (files, skipped)
}

fn walk(p: &Path, files: &mut Vec<PathBuf>, skipped: &mut Vec<(PathBuf, String)>, top: bool) {
    match std::fs::metadata(p) {
        Err(e) => skipped.push((p.to_path_buf(), e.to_string())),
        Ok(m) if m.is_dir() => match std::fs::read_dir(p) {
            Err(e) => skipped.push((p.to_path_buf(), e.to_string())),
            Ok(rd) => {
                for e in rd.flatten() {
                    let name = e.file_name();
                    // Hidden files and directories (.git, editor backups) are not documents.
                    if name.to_string_lossy().starts_with('.') {
                        continue;
                    }
                    walk(&e.path(), files, skipped, false);
                }
            }
        },
        Ok(_) => {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.as_deref().and_then(DocKind::from_filename).is_some() {
                // The daemon refuses such names too; say so before sending the file.
                match crate::kb::valid_filename(name.as_deref().unwrap_or("")) {
                    Ok(()) => files.push(p.to_path_buf()),
                    Err(m) => skipped.push((p.to_path_buf(), format!("filename {m}"))),
                }
            } else if top {
                // Only name files the admin listed explicitly; inside directories, other
                // files (images, spreadsheets) are simply not documents.
                skipped.push((
                    p.to_path_buf(),
                    "unsupported file type (txt, md, html, pdf, docx)".into(),
                ));
            }
        }
    }
}

fn ingest(t: &Target, a: &IngestArgs) -> Result<(), AdminCliError> {
    let (files, mut failed) = collect(&a.paths);
    let total = files.len() + failed.len();
    if files.is_empty() && failed.is_empty() {
        return Err(AdminCliError::Daemon(
            "no documents found (txt, md, html, pdf, docx)".into(),
        ));
    }
    // Fail early, before reading any file, if the daemon is not there.
    if let Conn::Down = connect(t)? {
        return Err(AdminCliError::NotRunning(t.socket.clone()));
    }
    let progress = std::io::stderr().is_terminal() && !a.json;
    let (mut ok, mut chunks) = (0usize, 0u64);
    for (i, f) in files.iter().enumerate() {
        if progress {
            let name = f.display().to_string();
            let skip = name.chars().count().saturating_sub(60);
            let shown: String = name.chars().skip(skip).collect();
            eprint!("\r\x1b[2K[{}/{}] {shown}", i + 1, files.len());
            let _ = std::io::stderr().flush();
        }
        let (document, error) = match ingest_one(t, &a.collection, f) {
            Ok(v) => {
                ok += 1;
                chunks += v["chunks"].as_u64().unwrap_or(0);
                (Some(v), None)
            }
            // Losing the daemon mid-run fails the rest the same way; stop here.
            Err(e @ (AdminCliError::NotRunning(_) | AdminCliError::Denied { .. })) => {
                if progress {
                    eprintln!();
                }
                return Err(e);
            }
            Err(e) => {
                failed.push((f.clone(), e.to_string()));
                (None, Some(e.to_string()))
            }
        };
        if a.json {
            let line = IngestLine {
                path: f,
                ok: error.is_none(),
                document: document.as_ref(),
                error,
            };
            out(&format!("{}\n", wire::value(&line)))?;
        }
    }
    if progress {
        eprint!("\r\x1b[2K");
    }
    if !a.json {
        let mut text = format!(
            "ingested {ok} of {} documents into `{}` ({chunks} chunks)\n",
            files.len(),
            a.collection
        );
        if !failed.is_empty() {
            text.push_str(&format!("{} failed:\n", failed.len()));
            for (p, why) in &failed {
                text.push_str(&format!("  {}: {why}\n", p.display()));
            }
        }
        out(&text)?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(AdminCliError::Daemon(format!(
            "{} of {total} documents failed",
            failed.len()
        )))
    }
}

fn ingest_one(t: &Target, collection: &str, path: &Path) -> Result<Value, AdminCliError> {
    let filename = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kind = DocKind::from_filename(&filename)
        .ok_or_else(|| AdminCliError::Daemon("unsupported file type".into()))?;
    let meta = std::fs::metadata(path).map_err(|e| AdminCliError::Daemon(e.to_string()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(AdminCliError::Daemon(format!(
            "file too large: {} bytes > {MAX_FILE_BYTES}",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| AdminCliError::Daemon(e.to_string()))?;
    request(
        t,
        req(&Req::KbIngest {
            collection,
            create: true,
            filename: &filename,
            content_type: kind.mime(),
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_supported_files_recursively() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("hr/policies");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::create_dir_all(d.path().join(".git")).unwrap();
        for f in [
            "a.md",
            "hr/b.PDF",
            "hr/policies/c.docx",
            "hr/x.png",
            ".git/d.txt",
        ] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        let lone = d.path().join("y.xlsx");
        std::fs::write(&lone, "x").unwrap();
        let (files, skipped) = collect(&[d.path().to_path_buf(), lone.clone()]);
        let rel: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(d.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(rel, ["a.md", "hr/b.PDF", "hr/policies/c.docx"]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].0, lone);
        let (_, missing) = collect(&[d.path().join("nope")]);
        assert_eq!(missing.len(), 1);
    }

    #[test]
    fn files_with_bidi_or_invisible_characters_in_their_names_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let bad = d.path().join("invoice\u{202E}txt.md");
        let zw = d.path().join("a\u{200B}b.txt");
        std::fs::write(&bad, "x").unwrap();
        std::fs::write(&zw, "x").unwrap();
        std::fs::write(d.path().join("good.txt"), "x").unwrap();
        let (files, skipped) = collect(&[d.path().to_path_buf()]);
        assert_eq!(files, [d.path().join("good.txt")]);
        let mut why: Vec<(PathBuf, String)> = skipped;
        why.sort();
        assert_eq!(why.len(), 2);
        assert_eq!(why[0].0, zw);
        assert!(
            why[0].1.starts_with("filename must not contain"),
            "{}",
            why[0].1
        );
        assert!(why[0].1.contains("U+200B"), "{}", why[0].1);
        assert_eq!(why[1].0, bad);
        assert!(why[1].1.contains("U+202E"), "{}", why[1].1);
    }
}
