//! `edgeseek audit [--since] [--key] [--group] [--kind] [--limit] [--json]` and
//! `edgeseek audit verify`: the audit log read from `<state_dir>/audit` directly (no daemon
//! needed; reading runs beside a daemon that writes).

use clap::{Args, Subcommand};

use super::cli::{out, render_table, AdminCliError, Target};
use crate::audit::{read, verify, Filter, Record};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub cmd: Option<AuditCmd>,
    /// Only records from this time on: a date (2026-12-01), a UTC time
    /// (2026-12-01T08:00:00Z) or an age (30m, 24h, 7d)
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only records of this API key (its id)
    #[arg(long, value_name = "ID")]
    pub key: Option<String>,
    /// Only records of this usage group (department)
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Only records of this kind: api, auth_failure or admin
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// The newest N records only
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// One JSON object per line, as stored
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check the hash chain: every record unchanged, none missing, none cut off the end
    /// (exit 1 naming the first break)
    Verify,
}

pub fn audit(t: &Target, a: &AuditArgs) -> Result<(), AdminCliError> {
    let dir = t.state_dir.join("audit");
    if let Some(AuditCmd::Verify) = a.cmd {
        let v = verify(&dir)
            .map_err(|e| AdminCliError::Daemon(format!("audit log {}: {e}", dir.display())))?;
        let mut line = match (v.first, v.last) {
            (Some(f), Some(l)) => format!("audit log intact: {} records ({f}..{l})", v.records),
            _ => "audit log intact: no records".to_string(),
        };
        if v.thinned {
            line.push_str("; older records were removed by retention");
        }
        if v.torn_tail {
            line.push_str("; the newest record is still being written");
        }
        return out(&format!("{line}\n"));
    }
    let since_ms = match &a.since {
        Some(s) => {
            Some(parse_since(s, crate::util::unix_now()).map_err(AdminCliError::Daemon)? * 1000)
        }
        None => None,
    };
    let filter = Filter {
        since_ms,
        key_id: a.key.clone(),
        group: a.group.clone(),
        kind: a.kind.clone(),
        limit: a.limit,
    };
    let records = read(&dir, &filter)?;
    if a.json {
        let mut s = String::new();
        for r in &records {
            s.push_str(
                &serde_json::to_string(r).map_err(|e| AdminCliError::Daemon(e.to_string()))?,
            );
            s.push('\n');
        }
        return out(&s);
    }
    if records.is_empty() {
        return out("no audit records\n");
    }
    let head: Vec<String> = [
        "TIME", "KIND", "KEY", "SOURCE", "WHAT", "MODEL", "STATUS", "TOKENS", "MS",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    let rows: Vec<Vec<String>> = records.iter().map(row).collect();
    out(&render_table(&head, &rows))
}

fn row(r: &Record) -> Vec<String> {
    let e = &r.event;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let what = match (&e.action, &e.method, &e.route) {
        (Some(a), _, _) => a.clone(),
        (None, Some(m), Some(p)) => format!("{m} {p}"),
        _ => "-".into(),
    };
    let what = match &e.target {
        Some(t) => format!("{what} {t}"),
        None => what,
    };
    let tokens = match (e.tokens_in, e.tokens_out) {
        (None, None) => "-".into(),
        (i, o) => format!("{}/{}", i.unwrap_or(0), o.unwrap_or(0)),
    };
    vec![
        time_utc(r.time_ms),
        e.kind.clone(),
        e.key_name
            .clone()
            .or_else(|| e.key_id.clone())
            .unwrap_or_else(|| "-".into()),
        opt(&e.source),
        what,
        opt(&e.model),
        e.status.map_or_else(|| "-".into(), |s| s.to_string()),
        tokens,
        e.ms.map_or_else(|| "-".into(), |m| m.to_string()),
    ]
}

/// Milliseconds since 1970 → `YYYY-MM-DDTHH:MM:SSZ`.
fn time_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = crate::util::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// `--since`: an age (`30m`, `24h`, `7d`), a date or a UTC time → Unix seconds.
fn parse_since(s: &str, now: u64) -> Result<u64, String> {
    let bad = || {
        format!("--since {s:?}: expected an age (30m, 24h, 7d), a date (2026-12-01) or a UTC time (2026-12-01T08:00:00Z)")
    };
    let s = s.trim();
    if let Some(unit) = s
        .chars()
        .last()
        .filter(|c| matches!(c, 's' | 'm' | 'h' | 'd'))
    {
        if let Ok(n) = s[..s.len() - 1].parse::<u64>() {
            let mult = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => 86_400,
            };
            return Ok(now.saturating_sub(n.saturating_mul(mult)));
        }
    }
    let (date, clock) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').ok_or_else(bad)?)),
        None => (s, None),
    };
    let nums = |text: &str, sep: char, n: usize| -> Option<Vec<u32>> {
        let v: Vec<u32> = text
            .split(sep)
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        (v.len() == n).then_some(v)
    };
    let d = nums(date, '-', 3).ok_or_else(bad)?;
    let month = time::Month::try_from(u8::try_from(d[1]).map_err(|_| bad())?).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(
        i32::try_from(d[0]).map_err(|_| bad())?,
        month,
        u8::try_from(d[2]).map_err(|_| bad())?,
    )
    .map_err(|_| bad())?;
    let clock = match clock {
        Some(c) => {
            let t = nums(c, ':', 3).ok_or_else(bad)?;
            let b = |x: u32| u8::try_from(x).map_err(|_| bad());
            time::Time::from_hms(b(t[0])?, b(t[1])?, b(t[2])?).map_err(|_| bad())?
        }
        None => time::Time::MIDNIGHT,
    };
    let t = time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .unix_timestamp();
    u64::try_from(t).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_ages_dates_and_times() {
        let now = 1_765_000_000;
        assert_eq!(parse_since("30m", now).unwrap(), now - 1800);
        assert_eq!(parse_since("7d", now).unwrap(), now - 7 * 86_400);
        assert_eq!(parse_since("2026-12-01", now).unwrap(), 1_796_083_200);
        assert_eq!(
            parse_since("2026-12-01T08:00:00Z", now).unwrap(),
            1_796_083_200 + 8 * 3600
        );
        for bad in ["yesterday", "7w", "2026-13-01", "2026-12-01T08:00:00"] {
            assert!(
                parse_since(bad, now).unwrap_err().contains("--since"),
                "{bad}"
            );
        }
    }

    #[test]
    fn times_print_in_utc() {
        assert_eq!(
            time_utc(1_796_083_200_000 + 8 * 3_600_000 + 61_000),
            "2026-12-01T08:01:01Z"
        );
    }
}
