//! ONNX Runtime and its execution providers as `serve` would register them, and the GPU
//! driver and device nodes CUDA needs.

use std::os::unix::fs::FileTypeExt;

use super::{Check, Ctx};
use crate::engine::ort_env::{self, Provider, ProviderPolicy};

/// The shared library the dynamic loader could not find, from a message like
/// `… with error: libcublasLt.so.13: cannot open shared object file: …`.
pub fn missing_library(cause: &str) -> Option<&str> {
    let end = cause.find(": cannot open shared object file")?;
    let start = cause[..end].rfind(' ').map_or(0, |i| i + 1);
    Some(&cause[start..end]).filter(|s| s.contains(".so"))
}

/// What to do about an unavailable provider, from its cause.
pub(super) fn provider_fix(p: Provider, cause: &str) -> String {
    let l = cause.to_ascii_lowercase();
    let cuda_libs = "the CUDA 13 runtime libraries and cuDNN 9 (NVIDIA's CUDA repository: \
                     cuda-libraries-13-0, libcudnn9-cuda-13) where the loader finds them (ldconfig)";
    if l.contains("not enabled in this build") {
        "install the GPU build of ONNX Runtime: scripts/install --gpu yes (onnxruntime-gpu 1.31.1 into /usr/lib/edgeseek/gpu)".into()
    } else if let Some(lib) = missing_library(cause) {
        if lib.starts_with("libnvinfer") || lib.starts_with("libnvonnxparser") {
            format!("{lib} is missing: install TensorRT 10 for CUDA 13, or drop \"tensorrt\" from engine.providers")
        } else {
            format!("{lib} is missing: install {cuda_libs}")
        }
    } else if l.contains(".so") {
        match p {
            Provider::Tensorrt => "install TensorRT 10 for CUDA 13 (libnvinfer) next to the CUDA libraries, or drop \"tensorrt\" from engine.providers".into(),
            _ => format!("install {cuda_libs}"),
        }
    } else if l.contains("no cuda-capable device") || l.contains("cuda failure") {
        "check the driver and device nodes (nvidia-smi; see gpu.devices / gpu.driver)".into()
    } else {
        format!("see the cause; or remove \"{p}\" from engine.providers")
    }
}

pub(super) fn check_runtime(ctx: &Ctx) -> Vec<Check> {
    let dev_fix = "run scripts/setup (puts libonnxruntime.so.1.31.1 in ./.runtime)";
    let rt = match ort_env::runtime(ctx.config.runtime.library.as_deref()) {
        Ok(rt) => rt,
        Err(e) => {
            return vec![
                Check::fail(
                    "onnxruntime",
                    e.to_string(),
                    if ctx.opts.paths.dev {
                        dev_fix
                    } else {
                        "reinstall the package (it ships /usr/lib/edgeseek/libonnxruntime.so.1.31.1) or set runtime.library"
                    },
                ),
                Check::skip(
                    "providers",
                    "not checked: no ONNX Runtime library",
                    "fix `onnxruntime` first",
                ),
            ]
        }
    };
    let compiled = ort_env::compiled_providers();
    let build = if compiled.iter().any(|p| p == "cuda") {
        "GPU build"
    } else {
        "CPU build"
    };
    let mut out = vec![Check::ok(
        "onnxruntime",
        format!(
            "{} at {} ({build}; providers compiled in: {})",
            rt.version,
            rt.library.display(),
            compiled.join(", ")
        ),
    )];
    let engine = &ctx.config.engine;
    let opts = ctx.config.provider_options(&ctx.state_dir);
    let mut usable = Vec::new();
    for p in [Provider::Tensorrt, Provider::Cuda, Provider::Cpu] {
        let name = format!("provider.{p}");
        let configured = engine.providers.contains(&p);
        match rt.probe_provider(p, &opts) {
            Ok(()) => {
                usable.push(p);
                let note = if configured {
                    ""
                } else {
                    " (not in engine.providers)"
                };
                let dev = if p == Provider::Cpu {
                    String::new()
                } else {
                    format!(" on device {}", engine.device_id)
                };
                out.push(Check::ok(name, format!("available{dev}{note}")));
            }
            Err(cause) if !configured => out.push(Check::skip(
                name,
                format!("not in engine.providers; would be unavailable: {cause}"),
                provider_fix(p, &cause),
            )),
            Err(cause) if p == Provider::Cpu => out.push(Check::fail(
                name,
                format!("ONNX Runtime cannot create a CPU session: {cause}"),
                "reinstall the package (the library may be damaged)",
            )),
            Err(cause) => out.push(Check::warn(
                name,
                format!("unavailable: {cause}"),
                provider_fix(p, &cause),
            )),
        }
    }
    // What `serve` would pick with engine.providers and engine.provider_policy.
    let first = engine.providers.first().copied().unwrap_or(Provider::Cpu);
    let chosen = engine
        .providers
        .iter()
        .find(|p| usable.contains(p))
        .copied();
    let order: Vec<&str> = engine.providers.iter().map(|p| p.as_str()).collect();
    out.push(match (engine.provider_policy, chosen) {
        (ProviderPolicy::Strict, _) if !usable.contains(&first) => Check::fail(
            "provider.selected",
            format!("provider_policy = \"strict\" and {first} (first of [{}]) is unavailable: the model will not load", order.join(", ")),
            "fix the provider (above) or set engine.provider_policy = \"fallback\"",
        ),
        (_, Some(p)) if p == first => Check::ok("provider.selected", format!("{p} (first of [{}])", order.join(", "))),
        (_, Some(p)) => Check::warn(
            "provider.selected",
            format!("{p}: falls back from [{}]", order.join(", ")),
            "see the provider lines above; or list only what this machine has in engine.providers",
        ),
        (_, None) => Check::fail(
            "provider.selected",
            format!("none of [{}] is available: the model will not load", order.join(", ")),
            "add \"cpu\" to engine.providers",
        ),
    });
    out
}

// --- GPU ---------------------------------------------------------------------------------------

/// The driver version from `/proc/driver/nvidia/version`
/// (`NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 …`).
pub fn parse_nvidia_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .find(|w| {
            w.contains('.')
                && w.split('.').count() >= 2
                && w.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
}

pub(super) fn check_gpu(ctx: &Ctx) -> Vec<Check> {
    let wants = ctx
        .config
        .engine
        .providers
        .iter()
        .any(|p| *p != Provider::Cpu);
    let soft = |name: &str, detail: String, fix: &str| {
        if wants {
            Check::warn(name, detail, fix)
        } else {
            Check::skip(
                name,
                format!("{detail} (engine.providers is CPU only)"),
                fix,
            )
        }
    };
    let mut missing = Vec::new();
    let mut odd = Vec::new();
    for n in &ctx.host.nvidia_nodes {
        match std::fs::metadata(n) {
            Ok(m) if m.file_type().is_char_device() => {}
            Ok(_) => odd.push(n.display().to_string()),
            Err(_) => missing.push(n.display().to_string()),
        }
    }
    let nodes = if missing.is_empty() && odd.is_empty() {
        let all: Vec<String> = ctx
            .host
            .nvidia_nodes
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        Check::ok("gpu.devices", all.join(", "))
    } else if !odd.is_empty() {
        soft(
            "gpu.devices",
            format!("not character devices: {}", odd.join(", ")),
            "remove them and reload the driver (modprobe -r nvidia-uvm nvidia; modprobe nvidia nvidia-uvm)",
        )
    } else if missing.len() == ctx.host.nvidia_nodes.len() {
        soft(
            "gpu.devices",
            format!("no NVIDIA device nodes ({} missing): CPU only", missing.join(", ")),
            "install the NVIDIA driver (apt-get install nvidia-driver) and reboot; edgeseek-nvidia.conf in modules-load.d loads nvidia and nvidia-uvm at boot",
        )
    } else {
        soft(
            "gpu.devices",
            format!("missing: {}", missing.join(", ")),
            "modprobe nvidia-uvm (and nvidia-modprobe -u -c=0 for the nodes; the unit cannot load modules itself)",
        )
    };
    let driver = match std::fs::read_to_string(&ctx.host.nvidia_version) {
        Ok(t) => match parse_nvidia_version(&t) {
            Some(v) => Check::ok("gpu.driver", format!("NVIDIA driver {v}")),
            None => soft(
                "gpu.driver",
                format!("{}: no version line", ctx.host.nvidia_version.display()),
                "reinstall the NVIDIA driver",
            ),
        },
        Err(_) => soft(
            "gpu.driver",
            format!(
                "no NVIDIA kernel driver loaded ({} missing)",
                ctx.host.nvidia_version.display()
            ),
            "install the NVIDIA driver (CUDA 13 needs 580 or newer) and reboot",
        ),
    };
    vec![nodes, driver]
}
