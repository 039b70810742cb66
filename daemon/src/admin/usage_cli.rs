//! `edgeseek usage [--from] [--to] [--group] [--key] [--json]`: the usage report through the
//! running daemon's admin socket (it holds the counts of the last second), or from the
//! database directly when none runs. Both build it with `api::usage_http::report`.

use clap::Args;
use serde_json::Value;

use super::cli::{call, connect, open_store, out, render_table, req, AdminCliError, Conn, Target};
use crate::api::usage_http::{report, UsageQuery};
use crate::api::wire::admin::AdminRequest as Req;

#[derive(Args, Debug)]
pub struct UsageArgs {
    /// First UTC day, YYYY-MM-DD (default: the first of this month)
    #[arg(long, value_name = "DATE")]
    pub from: Option<String>,
    /// Last UTC day, YYYY-MM-DD (default: today)
    #[arg(long, value_name = "DATE")]
    pub to: Option<String>,
    /// Only this usage group
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Only this key (its id)
    #[arg(long, value_name = "ID")]
    pub key: Option<String>,
    /// Print the report as one JSON object
    #[arg(long)]
    pub json: bool,
}

pub fn usage(t: &Target, a: &UsageArgs) -> Result<(), AdminCliError> {
    let v = match connect(t)? {
        Conn::Up(s) => call(
            t,
            s,
            req(&Req::Usage {
                from: a.from.as_deref(),
                to: a.to.as_deref(),
                group: a.group.as_deref(),
                key: a.key.as_deref(),
            }),
        )?,
        Conn::Down => {
            let today = crate::usage::day_of(crate::util::unix_now());
            let pairs = [
                ("from", &a.from),
                ("to", &a.to),
                ("group", &a.group),
                ("key", &a.key),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.clone()?)));
            let q = UsageQuery::parse(pairs, today)
                .map_err(|(p, m)| AdminCliError::Daemon(format!("--{p}: {m}")))?;
            let store = open_store(t)?;
            let keys = crate::keys::KeyStore::open(store.clone())?.list()?;
            let usage = crate::usage::UsageStore::open(store, crate::util::unix_now())
                .map_err(AdminCliError::Store)?;
            report(&usage, &keys, &t.group_quotas, &q, today).map_err(AdminCliError::Store)?
        }
    };
    if a.json {
        return out(&format!("{v}\n"));
    }
    out(&render(&v))
}

/// Two tables: groups, then keys, each with the range's counts and the quotas.
fn render(v: &Value) -> String {
    let num = |x: &Value| {
        x.as_u64()
            .map_or_else(|| "-".to_string(), |n| n.to_string())
    };
    let quota = |used: &Value, q: &Value| match q.as_u64() {
        Some(q) => format!("{}/{q}", num(used)),
        None => num(used),
    };
    let row = |x: &Value, first: String| {
        vec![
            first,
            num(&x["requests"]),
            num(&x["tokens_in"]),
            num(&x["tokens_out"]),
            quota(&x["used_today"], &x["tokens_per_day"]),
            quota(&x["used_this_month"], &x["tokens_per_month"]),
        ]
    };
    let head = |first: &str| -> Vec<String> {
        [
            first,
            "REQUESTS",
            "TOKENS_IN",
            "TOKENS_OUT",
            "TODAY",
            "MONTH",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let text = |x: &Value| x.as_str().unwrap_or("-").to_string();
    let mut s = format!(
        "usage {} .. {} (UTC days; TODAY and MONTH are tokens used / quota)\n\n",
        text(&v["from"]),
        text(&v["to"])
    );
    let empty = Vec::new();
    let groups: Vec<Vec<String>> = v["groups"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|g| row(g, g["group"].as_str().unwrap_or("(no group)").to_string()))
        .collect();
    let keys: Vec<Vec<String>> = v["keys"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|k| {
            let name = format!(
                "{} ({})",
                k["key_name"].as_str().unwrap_or("?"),
                text(&k["key_id"])
            );
            row(k, name)
        })
        .collect();
    if groups.is_empty() && keys.is_empty() {
        s.push_str("no usage in this range\n");
        return s;
    }
    s.push_str(&render_table(&head("GROUP"), &groups));
    s.push('\n');
    s.push_str(&render_table(&head("KEY"), &keys));
    s
}
