//! The listening port, the running daemon (asked over the admin socket) and the systemd
//! unit's hardening.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::{command_output, Check, Ctx, SERVICE_USER};

/// Socket inodes listening (state `0A`) on `port` in a `/proc/net/tcp` or `tcp6` table.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(1)?;
            let p = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (p == port && *f.get(3)? == "0A")
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// Processes holding one of `inodes` (`/proc/<pid>/fd/* -> socket:[inode]`): (pid, comm).
/// Only what this user may see: all processes for root.
fn socket_owners(proc: &Path, inodes: &[u64]) -> Vec<(u32, String)> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(proc) else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|t| wanted.iter().any(|w| t.as_os_str() == w.as_str()))
        });
        if holds {
            let comm = std::fs::read_to_string(e.path().join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            out.push((pid, comm));
        }
    }
    out.sort();
    out
}

/// Port of `[::]:443 (Stream)`-style `Listen=` values and of `ADDR:PORT`.
pub fn port_of(listen: &str) -> Option<u16> {
    let addr = listen.split_whitespace().next()?;
    addr.rsplit(':').next()?.parse().ok()
}

pub(super) fn check_port(ctx: &Ctx, daemon: Option<&Value>) -> Check {
    const NAME: &str = "port";
    // Under systemd the port is edgeseek.socket's; otherwise what `serve` would bind.
    let from_socket_unit = (!ctx.opts.paths.dev && ctx.host.systemd)
        .then(|| {
            command_output(
                "systemctl",
                &["show", "--property=Listen", "--value", "edgeseek.socket"],
            )
        })
        .flatten()
        .and_then(|l| {
            let l = l.lines().next()?.trim().to_string();
            port_of(&l).map(|p| (p, format!("{l} from edgeseek.socket")))
        });
    let (port, source) = match from_socket_unit {
        Some(x) => x,
        None => {
            let listen = ctx.config.server.listen.clone().unwrap_or_else(|| {
                if ctx.opts.paths.dev {
                    crate::service::DEV_LISTEN
                } else {
                    crate::service::DEFAULT_LISTEN
                }
                .to_string()
            });
            match port_of(&listen) {
                Some(p) => (p, listen),
                None => {
                    return Check::fail(
                        NAME,
                        format!("cannot read a port from `{listen}`"),
                        "set server.listen = \"ADDRESS:PORT\"",
                    )
                }
            }
        }
    };
    if port == 0 {
        return Check::skip(
            NAME,
            format!("{source}: a free port is picked at start"),
            "set server.listen to a fixed port to have it checked",
        );
    }
    let mut inodes = Vec::new();
    for t in ["net/tcp", "net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(ctx.host.proc.join(t)) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return Check::ok(NAME, format!("{port} is free ({source})"));
    }
    let daemon_port = daemon
        .and_then(|v| v["listen"].as_str())
        .and_then(|l| port_of(l.trim_start_matches("https://")));
    let owners = socket_owners(&ctx.host.proc, &inodes);
    let ours = |comm: &str, pid: u32| comm == "edgeseek" || pid == 1;
    let others: Vec<String> = owners
        .iter()
        .filter(|(pid, comm)| !ours(comm, *pid))
        .map(|(pid, comm)| format!("{comm} (pid {pid})"))
        .collect();
    if !others.is_empty() {
        return Check::fail(
            NAME,
            format!("{port} ({source}) is in use by {}", others.join(", ")),
            "stop that service, or move edgeseek to another port (drop-in for edgeseek.socket: ListenStream= then ListenStream=ADDR:PORT)",
        );
    }
    if !owners.is_empty() {
        let by: Vec<String> = owners
            .iter()
            .map(|(pid, comm)| {
                if *pid == 1 {
                    "systemd (edgeseek.socket, socket activation)".to_string()
                } else {
                    format!("{comm} (pid {pid})")
                }
            })
            .collect();
        return Check::ok(
            NAME,
            format!("{port} in use by edgeseek: {}", by.join(", ")),
        );
    }
    if daemon_port == Some(port) {
        return Check::ok(
            NAME,
            format!("{port} in use by the running edgeseek (its admin socket says so)"),
        );
    }
    Check::warn(
        NAME,
        format!("{port} ({source}) is in use by a process this user cannot see"),
        "run edgeseek doctor as root to see which",
    )
}

pub(super) fn query_daemon(ctx: &Ctx) -> Result<Option<Value>, String> {
    let target = crate::admin::cli::target(ctx.opts.paths.dev, &ctx.state_dir, &ctx.config.tls);
    crate::admin::cli::query_status(&target).map_err(|e| e.to_string())
}

pub(super) fn check_daemon(ctx: &Ctx, daemon: &Result<Option<Value>, String>) -> Check {
    const NAME: &str = "daemon";
    let socket = crate::admin::socket_path(ctx.opts.paths.dev, &ctx.state_dir);
    let v = match daemon {
        Err(e) => {
            return Check::warn(
                NAME,
                e.clone(),
                format!(
                    "run as root or as a member of {}",
                    crate::admin::ADMIN_GROUP
                ),
            )
        }
        Ok(None) => {
            let fix = if ctx.host.systemd && !ctx.opts.paths.dev {
                "systemctl start edgeseek (edgeseek.socket also starts it on the first connection); journalctl -u edgeseek says why it stopped"
            } else {
                "edgeseek serve (or start the appliance's edgeseek.service)"
            };
            return Check::warn(
                NAME,
                format!("not running (no answer on {})", socket.display()),
                fix,
            );
        }
        Ok(Some(v)) => v,
    };
    let model = v["model"].as_str().unwrap_or("?");
    let listen = v["listen"].as_str().unwrap_or("?");
    let uptime = v["uptime_s"].as_f64().unwrap_or(0.0);
    if v["ready"].as_bool() == Some(true) {
        let provider = v["provider"].as_str().unwrap_or("?");
        return Check::ok(
            NAME,
            format!("running on {listen}: {model} ready on {provider}, up {uptime:.0} s"),
        );
    }
    match v["model_error"].as_str() {
        Some(err) => Check::fail(
            NAME,
            format!("running on {listen}, but {model} failed to load: {err}"),
            "fix the model (see the model lines), then systemctl restart edgeseek",
        ),
        None => Check::warn(
            NAME,
            format!("running on {listen}; {model} is still loading (up {uptime:.0} s)"),
            "wait; a first TensorRT start builds engines for minutes",
        ),
    }
}

/// `systemctl show` output as a map.
pub fn parse_properties(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The sandbox settings of edgeseek.service that must be in effect, with the value systemd
/// reports for them.
pub(super) const HARDENING: [(&str, &str); 9] = [
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("DevicePolicy", "closed"),
];

/// Settings of `props` that are weaker than the shipped unit's.
pub fn hardening_gaps(props: &BTreeMap<String, String>) -> Vec<String> {
    let mut gaps: Vec<String> = HARDENING
        .iter()
        .filter(|(k, want)| props.get(*k).map(String::as_str) != Some(*want))
        .map(|(k, want)| {
            format!(
                "{k}={} (shipped: {want})",
                props.get(*k).map_or("?", String::as_str)
            )
        })
        .collect();
    let caps = props
        .get("CapabilityBoundingSet")
        .map_or("?", String::as_str);
    if !caps.trim().is_empty() {
        gaps.push(format!("CapabilityBoundingSet={caps} (shipped: empty)"));
    }
    if props.get("User").map(String::as_str) != Some(SERVICE_USER) {
        gaps.push(format!(
            "User={} (shipped: {SERVICE_USER})",
            props.get("User").map_or("?", String::as_str)
        ));
    }
    for k in ["RestrictAddressFamilies", "SystemCallFilter"] {
        if props.get(k).is_none_or(|v| v.trim().is_empty()) {
            gaps.push(format!("{k} is empty (shipped: set)"));
        }
    }
    gaps
}

/// `NoNewPrivs`, `Seccomp` and `CapEff` of `/proc/<pid>/status`; gaps against the sandbox.
pub fn process_gaps(status: &str) -> Vec<String> {
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
    };
    let mut gaps = Vec::new();
    if field("NoNewPrivs:").as_deref() != Some("1") {
        gaps.push(format!(
            "NoNewPrivs: {}",
            field("NoNewPrivs:").unwrap_or_default()
        ));
    }
    // 2 = SECCOMP_MODE_FILTER (SystemCallFilter=).
    if field("Seccomp:").as_deref() != Some("2") {
        gaps.push(format!(
            "Seccomp: {}",
            field("Seccomp:").unwrap_or_default()
        ));
    }
    if field("CapEff:").is_none_or(|c| c.bytes().any(|b| b != b'0')) {
        gaps.push(format!("CapEff: {}", field("CapEff:").unwrap_or_default()));
    }
    gaps
}

pub(super) fn check_unit(ctx: &Ctx) -> Check {
    const NAME: &str = "unit.hardening";
    if ctx.opts.paths.dev {
        return Check::skip(
            NAME,
            "--dev: not running under edgeseek.service",
            "on the appliance: edgeseek doctor (without --dev)",
        );
    }
    if !ctx.host.systemd {
        return Check::skip(
            NAME,
            "systemd is not PID 1 here (container, chroot or image build): the sandbox of edgeseek.service cannot be checked",
            "on the booted appliance: edgeseek doctor, or systemd-analyze security edgeseek",
        );
    }
    let mut props = vec![
        "LoadState",
        "ActiveState",
        "MainPID",
        "User",
        "CapabilityBoundingSet",
        "RestrictAddressFamilies",
        "SystemCallFilter",
    ];
    props.extend(HARDENING.iter().map(|(k, _)| *k));
    let arg = format!("--property={}", props.join(","));
    let Some(text) = command_output("systemctl", &["show", &arg, "edgeseek.service"]) else {
        return Check::warn(
            NAME,
            "systemctl show edgeseek.service failed",
            "systemctl status edgeseek",
        );
    };
    let p = parse_properties(&text);
    if p.get("LoadState").map(String::as_str) != Some("loaded") {
        return Check::fail(
            NAME,
            format!(
                "edgeseek.service is {}",
                p.get("LoadState").map_or("unknown", String::as_str)
            ),
            "reinstall the package (it ships /usr/lib/systemd/system/edgeseek.service); systemctl daemon-reload",
        );
    }
    let mut gaps = hardening_gaps(&p);
    let pid: u32 = p.get("MainPID").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut running = String::from("not running: unit settings only");
    if pid > 0 {
        match std::fs::read_to_string(ctx.host.proc.join(pid.to_string()).join("status")) {
            Ok(s) => {
                let g = process_gaps(&s);
                if g.is_empty() {
                    running = format!("pid {pid}: NoNewPrivs 1, seccomp filter, no capabilities");
                }
                gaps.extend(g.into_iter().map(|g| format!("pid {pid} {g}")));
            }
            Err(e) => running = format!("pid {pid}: {e}"),
        }
    }
    if gaps.is_empty() {
        Check::ok(
            NAME,
            format!("edgeseek.service sandbox in effect ({running})"),
        )
    } else {
        Check::fail(
            NAME,
            format!("weaker than shipped: {}", gaps.join("; ")),
            "systemctl cat edgeseek shows the drop-in that overrides it; remove it, then systemctl daemon-reload && systemctl restart edgeseek",
        )
    }
}
