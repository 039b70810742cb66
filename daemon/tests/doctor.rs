//! `edgeseek doctor` against the real ONNX Runtime library (`scripts/setup` puts the CPU build
//! in `<repo>/.runtime`) and the tiny fixture model, with a manifest made by `sha256sum`.

use std::path::{Path, PathBuf};
use std::process::Command;

use edgeseek::config::Paths;
use edgeseek::doctor::{self, Level, Options, Report};
use edgeseek::engine::ort_env;
use edgeseek::engine::{Provider, ProviderOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn check<'a>(r: &'a Report, name: &str) -> &'a doctor::Check {
    r.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name}:\n{}", r.to_text()))
}

#[test]
fn gpu_providers_of_the_cpu_build_say_why_they_are_unavailable() {
    let rt = ort_env::runtime(Some(&root().join(".runtime"))).expect("scripts/setup library");
    let opts = ProviderOptions::default();
    rt.probe_provider(Provider::Cpu, &opts)
        .expect("cpu session");
    for p in [Provider::Cuda, Provider::Tensorrt] {
        let cause = rt.probe_provider(p, &opts).unwrap_err();
        assert!(
            cause.contains("not enabled in this build of ONNX Runtime"),
            "{p}: {cause}"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_model_is_read_and_verified_against_its_manifest() {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("models/tiny-qwen2-genai");
    copy_dir(&root().join("tests/fixtures/tiny-qwen2-genai"), &model);
    let cfg = t.path().join("edgeseek.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\nlibrary = \"{}\"\n",
            root().join(".runtime").display()
        ),
    )
    .unwrap();
    let opts = Options {
        paths: Paths {
            config: Some(cfg),
            dev: true,
            state_dir: Some(t.path().join("state")),
        },
        models: vec![model.clone()],
        verify_hashes: true,
    };
    let name = "model:tiny-qwen2-genai";

    let r = doctor::run(&opts);
    assert_eq!(check(&r, "config").status, Level::Ok);
    assert_eq!(check(&r, "onnxruntime").status, Level::Ok);
    assert_eq!(check(&r, "provider.cpu").status, Level::Ok);
    let cuda = check(&r, "provider.cuda");
    assert_eq!(cuda.status, Level::Warn);
    assert!(
        cuda.detail.contains("not enabled in this build"),
        "{}",
        cuda.detail
    );
    assert!(cuda.fix.as_deref().unwrap().contains("--gpu yes"));
    let m = check(&r, name);
    assert_eq!(m.status, Level::Warn, "{m:?}");
    assert!(m.detail.contains("genai layout, qwen2"), "{}", m.detail);
    assert!(m.detail.contains("no manifest.sha256"), "{}", m.detail);

    // The manifest as the shell tools write it (`sha256sum`, relative paths).
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . -type f ! -name manifest.sha256 -printf '%P\\0' | sort -z | xargs -0 sha256sum > manifest.sha256")
        .current_dir(&model)
        .status()
        .unwrap();
    assert!(out.success());
    let files = std::fs::read_dir(&model).unwrap().count() - 1;
    let r = doctor::run(&opts);
    let m = check(&r, name);
    assert_eq!(m.status, Level::Ok, "{m:?}");
    assert!(
        m.detail
            .ends_with(&format!("{files} files sha256 verified")),
        "{}",
        m.detail
    );

    // One changed byte is found (and named); without hashing only presence is checked.
    let tok = model.join("tokenizer.json");
    let mut bytes = std::fs::read(&tok).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    std::fs::write(&tok, bytes).unwrap();
    let r = doctor::run(&opts);
    let m = check(&r, name);
    assert_eq!(m.status, Level::Fail, "{m:?}");
    assert!(
        m.detail.contains("tokenizer.json (sha256 differs)"),
        "{}",
        m.detail
    );
    assert!(r.failed());
    let quick = doctor::run(&Options {
        verify_hashes: false,
        ..opts.clone()
    });
    assert_eq!(check(&quick, name).status, Level::Ok);
}
