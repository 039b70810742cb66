use std::collections::BTreeMap;
use std::time::Duration;

use super::runtime::provider_fix;
use super::service::HARDENING;
use super::*;
use crate::engine::ort_env::Provider;

fn host(tmp: &Path) -> Host {
    Host {
        systemd: false,
        proc: tmp.join("proc"),
        nvidia_nodes: NVIDIA_NODES
            .iter()
            .map(|n| tmp.join(n.trim_start_matches('/')))
            .collect(),
        nvidia_version: tmp.join("nvidia-version"),
        embed_dirs: vec![tmp.join("usr-lib-models").join(EMBED_MODEL)],
        built: Some(SystemTime::now()),
    }
}

fn find<'a>(r: &'a Report, name: &str) -> &'a Check {
    r.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {}", r.to_text()))
}

#[test]
fn disk_thresholds() {
    assert_eq!(disk_level((1 << 30) - 1), Level::Fail);
    assert_eq!(disk_level(1 << 30), Level::Warn);
    assert_eq!(disk_level((5 << 30) - 1), Level::Warn);
    assert_eq!(disk_level(5 << 30), Level::Ok);
}

#[test]
fn clock_against_the_build_time() {
    let built = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000); // 2026-09
    assert_eq!(
        clock_level(built + Duration::from_secs(60), built),
        Level::Ok
    );
    assert_eq!(
        clock_level(built - Duration::from_secs(3600), built),
        Level::Ok
    );
    assert_eq!(
        clock_level(built - Duration::from_secs(30 * 86_400), built),
        Level::Warn
    );
    // An unset RTC starts in 1970 (or 2000): a different year is a FAIL.
    assert_eq!(clock_level(SystemTime::UNIX_EPOCH, built), Level::Fail);
}

#[test]
fn the_missing_library_is_named_in_the_fix() {
    // The cause as `edgeseek doctor` printed it after `scripts/install --gpu yes
    // --ort-gpu-wheel onnxruntime_gpu-1.31.1-….whl` on a machine without CUDA 13.
    let cuda = "CUDA libraries could not be loaded (NVIDIA driver / CUDA 13 runtime missing?): /onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:2043 onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load library /usr/lib/edgeseek/gpu/libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object file: No such file or directory";
    assert_eq!(missing_library(cuda), Some("libcublasLt.so.13"));
    let fix = provider_fix(Provider::Cuda, cuda);
    assert!(
        fix.starts_with("libcublasLt.so.13 is missing: install the CUDA 13 runtime"),
        "{fix}"
    );
    let trt = "Failed to load library libonnxruntime_providers_tensorrt.so with error: libnvinfer.so.10: cannot open shared object file: No such file or directory";
    assert!(provider_fix(Provider::Tensorrt, trt)
        .starts_with("libnvinfer.so.10 is missing: install TensorRT 10"));
    assert_eq!(
        missing_library("CUDA failure 100: no CUDA-capable device is detected"),
        None
    );
    assert!(provider_fix(
        Provider::Cuda,
        "CUDA failure 100: no CUDA-capable device is detected"
    )
    .contains("nvidia-smi"));
    assert!(provider_fix(
        Provider::Cuda,
        "CUDA execution provider is not enabled in this build of ONNX Runtime"
    )
    .contains("--gpu yes"));
}

#[test]
fn nvidia_driver_version() {
    let text = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 06:54:38 UTC 2025\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n";
    assert_eq!(parse_nvidia_version(text).as_deref(), Some("580.65.06"));
    assert_eq!(parse_nvidia_version("GCC version: 12.2.0\n"), None);
}

#[test]
fn manifest_format_is_sha256sum() {
    let h = "a".repeat(64);
    let m = parse_manifest(&format!(
        "{h}  model.onnx\n{h} *onnx/model.onnx\n{h}  ./tokenizer.json\n"
    ))
    .unwrap();
    let paths: Vec<&Path> = m.iter().map(|e| e.path.as_path()).collect();
    assert_eq!(
        paths,
        [
            Path::new("model.onnx"),
            Path::new("onnx/model.onnx"),
            Path::new("tokenizer.json")
        ]
    );
    for bad in [
        format!("{h}  /etc/passwd"),
        format!("{h}  ../x"),
        format!("{h}  a/../../x"),
        "abc  model.onnx".to_string(),
        format!("{h} model.onnx"),
        String::new(),
    ] {
        assert!(parse_manifest(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn manifest_verification_finds_changed_and_missing_files() {
    let d = tempfile::tempdir().unwrap();
    assert_eq!(verify_manifest(d.path(), true), ManifestState::Absent);
    std::fs::write(d.path().join("a.bin"), b"hello").unwrap();
    std::fs::create_dir(d.path().join("sub")).unwrap();
    std::fs::write(d.path().join("sub/b.txt"), b"").unwrap();
    // sha256("hello") and sha256("") as `sha256sum` prints them.
    let manifest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824  a.bin\n\
                    e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  sub/b.txt\n";
    std::fs::write(d.path().join(MANIFEST), manifest).unwrap();
    assert_eq!(
        verify_manifest(d.path(), true),
        ManifestState::Verified {
            files: 2,
            hashed: true
        }
    );
    std::fs::write(d.path().join("a.bin"), b"hellO").unwrap();
    match verify_manifest(d.path(), true) {
        ManifestState::Bad(m) => assert!(m.contains("a.bin (sha256 differs)"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Without hashing a changed file passes; a missing one never does.
    assert_eq!(
        verify_manifest(d.path(), false),
        ManifestState::Verified {
            files: 2,
            hashed: false
        }
    );
    std::fs::remove_file(d.path().join("sub/b.txt")).unwrap();
    match verify_manifest(d.path(), false) {
        ManifestState::Bad(m) => assert!(m.contains("sub/b.txt (missing)"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn listening_sockets_from_proc_net_tcp() {
    // /proc/net/tcp rows: 0.0.0.0:443 LISTEN (inode 111), 127.0.0.1:8443 LISTEN (222),
    // an established connection from port 443 (333).
    let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0\n\
   2: 0100007F:01BB 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 20 4 30 10 -1\n";
    assert_eq!(listening_inodes(table, 443), vec![111]);
    assert_eq!(listening_inodes(table, 8443), vec![222]);
    assert!(listening_inodes(table, 80).is_empty());
    assert_eq!(port_of("[::]:443 (Stream)"), Some(443));
    assert_eq!(port_of("127.0.0.1:8443"), Some(8443));
    assert_eq!(port_of("https://[::1]:9443"), Some(9443));
}

#[test]
fn weakened_units_and_processes_are_named() {
    let mut p: BTreeMap<String, String> = HARDENING
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    p.insert("CapabilityBoundingSet".into(), String::new());
    p.insert("User".into(), SERVICE_USER.into());
    p.insert(
        "RestrictAddressFamilies".into(),
        "AF_UNIX AF_NETLINK".into(),
    );
    p.insert("SystemCallFilter".into(), "access accept4 …".into());
    assert!(hardening_gaps(&p).is_empty(), "{:?}", hardening_gaps(&p));
    p.insert("NoNewPrivileges".into(), "no".into());
    p.insert(
        "CapabilityBoundingSet".into(),
        "cap_net_bind_service".into(),
    );
    let g = hardening_gaps(&p);
    assert_eq!(
        g,
        vec![
            "NoNewPrivileges=no (shipped: yes)".to_string(),
            "CapabilityBoundingSet=cap_net_bind_service (shipped: empty)".to_string()
        ]
    );
    let sandboxed = "Name:\tedgeseek\nNoNewPrivs:\t1\nSeccomp:\t2\nCapEff:\t0000000000000000\n";
    assert!(process_gaps(sandboxed).is_empty());
    let plain = "Name:\tedgeseek\nNoNewPrivs:\t0\nSeccomp:\t0\nCapEff:\t000001ffffffffff\n";
    assert_eq!(process_gaps(plain).len(), 3);
}

#[test]
fn a_dev_state_dir_with_a_bad_model_and_no_gpu() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    let state = t.path().join("state");
    let bad = state.join("models").join("broken");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("genai_config.json"), "{").unwrap();
    let opts = Options {
        paths: Paths {
            dev: true,
            state_dir: Some(state.clone()),
            ..Paths::default()
        },
        verify_hashes: true,
        ..Options::default()
    };
    let r = run_on(&opts, &h);
    let m = find(&r, "model:broken");
    assert_eq!(m.status, Level::Fail, "{}", r.to_text());
    assert!(m.detail.contains("genai_config.json"), "{}", m.detail);
    let nodes = find(&r, "gpu.devices");
    assert_eq!(nodes.status, Level::Warn);
    for n in &h.nvidia_nodes {
        assert!(
            nodes.detail.contains(&n.display().to_string()),
            "{}",
            nodes.detail
        );
    }
    assert_eq!(find(&r, "gpu.driver").status, Level::Warn);
    assert_eq!(find(&r, "tls").status, Level::Warn);
    assert_eq!(find(&r, "embeddings").status, Level::Warn);
    assert_eq!(find(&r, "unit.hardening").status, Level::Skip);
    assert_eq!(find(&r, "daemon").status, Level::Warn);
    assert!(r.failed());
    // Every line that is not OK says what to do.
    for c in &r.checks {
        assert_eq!(c.fix.is_some(), c.status != Level::Ok, "{c:?}");
    }
    let text = r.to_text();
    assert_eq!(text.lines().count(), r.checks.len() + 1);
    assert!(text
        .lines()
        .next_back()
        .unwrap()
        .starts_with("edgeseek doctor: "));
    let j = serde_json::to_value(r.to_json()).unwrap();
    assert_eq!(j["ok"], false);
    assert_eq!(j["checks"].as_array().unwrap().len(), r.checks.len());
}

#[test]
fn gpu_driver_and_embeddings_when_present() {
    let t = tempfile::tempdir().unwrap();
    let h = host(t.path());
    std::fs::write(
        &h.nvidia_version,
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.82.07  Fri Aug 22 2025\n",
    )
    .unwrap();
    let embed = &h.embed_dirs[0];
    std::fs::create_dir_all(embed.join("onnx")).unwrap();
    std::fs::write(embed.join("tokenizer.json"), "{}").unwrap();
    std::fs::write(embed.join("onnx/model_quantized.onnx"), "x").unwrap();
    let opts = Options {
        paths: Paths {
            dev: true,
            state_dir: Some(t.path().join("state")),
            ..Paths::default()
        },
        ..Options::default()
    };
    let r = run_on(&opts, &h);
    let d = find(&r, "gpu.driver");
    assert_eq!(
        (d.status, d.detail.as_str()),
        (Level::Ok, "NVIDIA driver 580.82.07")
    );
    let e = find(&r, "embeddings");
    // Present, but without a manifest its files are not verified.
    assert_eq!(e.status, Level::Warn, "{e:?}");
    assert!(e.detail.contains("no manifest.sha256"), "{}", e.detail);
}

#[test]
fn a_state_dir_file_of_another_owner_fails_as_root() {
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    std::fs::create_dir_all(state.join("tls")).unwrap();
    std::fs::write(state.join("tls/server.key"), "k").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        state.join("tls/server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let opts = Options {
        paths: Paths {
            dev: true,
            state_dir: Some(state.clone()),
            ..Paths::default()
        },
        ..Options::default()
    };
    let h = host(t.path());
    let r = run_on(&opts, &h);
    let c = find(&r, "state.dir");
    assert_eq!(c.status, Level::Fail, "{c:?}");
    assert!(
        c.detail.contains("private keys readable by others"),
        "{}",
        c.detail
    );
    std::fs::set_permissions(
        state.join("tls/server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(find(&run_on(&opts, &h), "state.dir").status, Level::Ok);
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(state.join("tls"), Some(4242), None).unwrap();
        let c = find(&run_on(&opts, &h), "state.dir").clone();
        assert_eq!(c.status, Level::Fail, "{c:?}");
        assert!(c.detail.contains("uid 4242"), "{}", c.detail);
    }
}
