//! Configuration, the service user, the state directory, free disk space and the clock.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{
    command_output, Check, Ctx, Level, Options, DISK_FAIL_BYTES, DISK_WARN_BYTES, SERVICE_USER,
};
use crate::config::{Config, DEFAULT_CONFIG};

pub(super) fn check_config(opts: &Options) -> (Config, Check) {
    let file = match (&opts.paths.config, opts.paths.dev) {
        (Some(f), _) => Some(f.clone()),
        (None, false) if Path::new(DEFAULT_CONFIG).is_file() => Some(PathBuf::from(DEFAULT_CONFIG)),
        _ => None,
    };
    match Config::load(opts.paths.config.as_deref(), opts.paths.dev) {
        Ok(c) => {
            let detail = match (&file, opts.paths.dev) {
                (Some(f), _) => format!("{} parses", f.display()),
                (None, true) => "--dev: built-in defaults (no --config)".to_string(),
                (None, false) => format!("no {DEFAULT_CONFIG}: built-in defaults"),
            };
            (c, Check::ok("config", detail))
        }
        Err(e) => (
            Config::default(),
            Check::fail(
                "config",
                format!("{e}; the checks below use the built-in defaults"),
                "correct the named key (every setting is documented in the shipped \
                 /etc/edgeseek/edgeseek.toml); a running daemon keeps its settings until then",
            ),
        ),
    }
}

pub(super) fn check_user(ctx: &Ctx) -> Check {
    if ctx.opts.paths.dev {
        return Check::skip(
            "user",
            "--dev: the daemon runs as the current user",
            "run without --dev to check the service user",
        );
    }
    let Some(uid) = ctx.service_uid else {
        return Check::fail(
            "user",
            format!(
                "no user `{SERVICE_USER}`: edgeseek.service (User={SERVICE_USER}) cannot start"
            ),
            "systemd-sysusers edgeseek.conf (the package's postinst runs it)",
        );
    };
    match nix::unistd::Group::from_name(crate::admin::ADMIN_GROUP) {
        Ok(Some(g)) => {
            let members: Vec<&str> = g.mem.iter().map(String::as_str).collect();
            if members.contains(&SERVICE_USER) {
                Check::ok(
                    "user",
                    format!(
                        "{SERVICE_USER} (uid {uid}); group {} has {}",
                        crate::admin::ADMIN_GROUP,
                        members.join(", ")
                    ),
                )
            } else {
                Check::warn(
                    "user",
                    format!(
                        "{SERVICE_USER} is not a member of {}: the admin socket stays owner-only",
                        crate::admin::ADMIN_GROUP
                    ),
                    format!("usermod -aG {} {SERVICE_USER}", crate::admin::ADMIN_GROUP),
                )
            }
        }
        _ => Check::warn(
            "user",
            format!(
                "{SERVICE_USER} (uid {uid}) exists but group {} does not: only root can use the admin socket",
                crate::admin::ADMIN_GROUP
            ),
            "systemd-sysusers edgeseek.conf",
        ),
    }
}

fn who(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

pub(super) fn check_state_dir(ctx: &Ctx) -> Check {
    const NAME: &str = "state.dir";
    let dir = &ctx.state_dir;
    let shown = dir.display();
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if ctx.opts.paths.dev {
                Check::ok(
                    NAME,
                    format!("{shown} does not exist yet; the first serve creates it"),
                )
            } else {
                Check::fail(
                    NAME,
                    format!("{shown} does not exist"),
                    "systemd-tmpfiles --create edgeseek.conf (or reinstall the package)",
                )
            };
        }
        Err(e) => {
            return Check::warn(NAME, format!("{shown}: {e}"), "run edgeseek doctor as root");
        }
    };
    if !meta.is_dir() {
        return Check::fail(NAME, format!("{shown} is not a directory"), "move it away");
    }
    let expected = ctx
        .service_uid
        .unwrap_or_else(|| nix::unistd::geteuid().as_raw());
    if meta.uid() != expected {
        return Check::fail(
            NAME,
            format!(
                "{shown} is owned by {}, not {}: the daemon cannot write its database and keys",
                who(meta.uid()),
                who(expected)
            ),
            format!("chown -R {} {shown}", who_name(expected)),
        );
    }
    // Entries created by root (`sudo edgeseek keys create` with a daemon user) must have been
    // handed over; private keys must stay private.
    let mut entries = Vec::new();
    let mut unreadable = None;
    for sub in [dir.clone(), dir.join("tls"), dir.join("models")] {
        match std::fs::read_dir(&sub) {
            Ok(rd) => entries.extend(rd.flatten().map(|e| e.path())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => unreadable = Some(format!("{}: {e}", sub.display())),
        }
    }
    let mut foreign = Vec::new();
    let mut open_keys = Vec::new();
    for p in entries {
        match std::fs::symlink_metadata(&p) {
            Ok(m) => {
                if m.uid() != expected {
                    foreign.push(format!("{} ({})", p.display(), who(m.uid())));
                }
                let is_key = p.extension().is_some_and(|e| e == "key");
                if is_key && m.mode() & 0o077 != 0 {
                    open_keys.push(format!("{} ({:04o})", p.display(), m.mode() & 0o7777));
                }
            }
            Err(e) => unreadable = Some(format!("{}: {e}", p.display())),
        }
    }
    let mode = meta.mode() & 0o7777;
    if !open_keys.is_empty() {
        return Check::fail(
            NAME,
            format!("private keys readable by others: {}", open_keys.join(", ")),
            "chmod 0600 on each",
        );
    }
    if !foreign.is_empty() {
        let more = if foreign.len() > 4 {
            format!(" and {} more", foreign.len() - 4)
        } else {
            String::new()
        };
        foreign.truncate(4);
        return Check::fail(
            NAME,
            format!(
                "not owned by {}: {}{more}",
                who(expected),
                foreign.join(", ")
            ),
            format!("chown -R {} {shown}", who_name(expected)),
        );
    }
    if let Some(u) = unreadable {
        return Check::warn(
            NAME,
            format!("cannot inspect {u}"),
            "run edgeseek doctor as root",
        );
    }
    if mode & 0o077 != 0 {
        return Check::warn(
            NAME,
            format!("{shown} is mode {mode:04o}: others can list the database and TLS files"),
            format!("chmod 0700 {shown}"),
        );
    }
    Check::ok(NAME, format!("{shown}: {}, mode {mode:04o}", who(expected)))
}

fn who_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{0}:{0}", u.name),
        _ => uid.to_string(),
    }
}

/// Free bytes → level: FAIL below [`DISK_FAIL_BYTES`], WARN below [`DISK_WARN_BYTES`].
pub fn disk_level(free: u64) -> Level {
    if free < DISK_FAIL_BYTES {
        Level::Fail
    } else if free < DISK_WARN_BYTES {
        Level::Warn
    } else {
        Level::Ok
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

pub(super) fn check_disk(ctx: &Ctx) -> Check {
    const NAME: &str = "state.disk";
    // The state directory may not exist yet (dev); its file system is the nearest ancestor's.
    let mut at = ctx.state_dir.clone();
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p.to_path_buf(),
            _ => {
                at = PathBuf::from(".");
                break;
            }
        }
    }
    match nix::sys::statvfs::statvfs(&at) {
        Ok(s) => {
            let free = s.blocks_available() * s.fragment_size();
            let detail = format!("{} free on {}", gib(free), at.display());
            match disk_level(free) {
                Level::Fail => Check::fail(
                    NAME,
                    format!("{detail} (< 1 GiB): the database and TensorRT cache cannot grow"),
                    "free space (old models, journal: journalctl --vacuum-size=200M)",
                ),
                Level::Warn => Check::warn(
                    NAME,
                    format!("{detail} (< 5 GiB)"),
                    "free space before adding models or documents",
                ),
                _ => Check::ok(NAME, detail),
            }
        }
        Err(e) => Check::warn(
            NAME,
            format!("statvfs {}: {e}", at.display()),
            "check the mount",
        ),
    }
}

fn year_of(t: SystemTime) -> i64 {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    crate::util::civil_from_days(secs.div_euclid(86_400)).0
}

/// The clock against a time it cannot be earlier than (when this binary was built or
/// installed): an earlier year is a FAIL (certificates are "not yet valid", logs lie), a clock
/// more than a day behind within the year a WARN.
pub fn clock_level(now: SystemTime, reference: SystemTime) -> Level {
    if year_of(now) < year_of(reference) {
        Level::Fail
    } else if reference
        .duration_since(now)
        .is_ok_and(|behind| behind.as_secs() > 86_400)
    {
        Level::Warn
    } else {
        Level::Ok
    }
}

fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    crate::tls::utc_string(secs)
}

pub(super) fn check_clock(ctx: &Ctx, now: SystemTime) -> Check {
    const NAME: &str = "clock";
    let mut detail = format!("{} UTC", utc(now).trim_end_matches('Z').replace('T', " "));
    let sync = if ctx.host.systemd {
        command_output(
            "timedatectl",
            &["show", "--property=NTPSynchronized", "--value"],
        )
    } else {
        None
    };
    let Some(built) = ctx.host.built else {
        return Check::ok(NAME, detail);
    };
    let level = clock_level(now, built);
    let fix = "set the time (timedatectl set-time, or enable NTP: timedatectl set-ntp true)";
    match level {
        Level::Fail => {
            return Check::fail(
                NAME,
                format!(
                    "{detail}: earlier than the year this edgeseek was built or installed ({}); TLS certificates will look not yet valid",
                    utc(built)
                ),
                fix,
            )
        }
        Level::Warn => {
            return Check::warn(
                NAME,
                format!("{detail}: behind the time this edgeseek was built or installed ({})", utc(built)),
                fix,
            )
        }
        _ => {}
    }
    match sync.as_deref().map(str::trim) {
        Some("no") => Check::warn(
            NAME,
            format!("{detail}; not synchronised (NTPSynchronized=no)"),
            "timedatectl set-ntp true (systemd-timesyncd or chrony)",
        ),
        Some("yes") => {
            detail.push_str("; NTP synchronised");
            Check::ok(NAME, detail)
        }
        _ => Check::ok(NAME, detail),
    }
}
