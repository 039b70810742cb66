//! The usage report: `GET /v1/admin/usage`, the admin socket's `usage` and offline
//! `edgeseek usage` all build it here, from the same query words.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::error::ApiError;
use super::gate::Call;
use super::Body;
use crate::keys::KeyRecord;
use crate::usage::{date_of, day_of, month_of, parse_date, Counts, Quota, UsageStore};

/// What a report covers: UTC days `from..=to`, one group or key when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub from: u32,
    pub to: u32,
    pub group: Option<String>,
    pub key: Option<String>,
}

impl UsageQuery {
    /// From `(name, value)` pairs (`from`, `to` as YYYY-MM-DD; `group`; `key`); the default
    /// range is the current month up to `today`. The error names the parameter.
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a str, String)>,
        today: u32,
    ) -> Result<UsageQuery, (String, String)> {
        let mut q = UsageQuery {
            from: month_of(today).0,
            to: today,
            group: None,
            key: None,
        };
        for (k, v) in pairs {
            let date = || {
                parse_date(&v)
                    .ok_or_else(|| (k.to_string(), format!("`{k}` must be a date, YYYY-MM-DD")))
            };
            match k {
                "from" => q.from = date()?,
                "to" => q.to = date()?,
                "group" => q.group = Some(v),
                "key" => q.key = Some(v),
                _ => {
                    return Err((
                        k.to_string(),
                        format!("unknown parameter `{k}` (from, to, group, key)"),
                    ))
                }
            }
        }
        if q.from > q.to || q.to - q.from > 400 {
            return Err((
                "from".into(),
                "`from` must not be after `to`, and the range at most 400 days".into(),
            ));
        }
        Ok(q)
    }
}

impl UsageQuery {
    /// From an admin-socket request's `from`, `to`, `group` and `key` strings.
    pub fn from_request(req: &Value, today: u32) -> Result<UsageQuery, String> {
        let pairs = ["from", "to", "group", "key"]
            .into_iter()
            .filter_map(|k| Some((k, req.get(k)?.as_str()?.to_string())));
        UsageQuery::parse(pairs, today).map_err(|(_, m)| m)
    }
}

/// The report: `data` (a row per day and key), `groups` and `keys` (totals over the range,
/// with quotas and what is used of them today and this month).
pub fn report(
    usage: &UsageStore,
    keys: &[KeyRecord],
    group_quotas: &BTreeMap<String, Quota>,
    q: &UsageQuery,
    today: u32,
) -> Result<Value, crate::store::StoreError> {
    let rows = usage.rows(q.from, q.to, q.group.as_deref(), q.key.as_deref())?;
    let month_rows = usage.rows(month_of(today).0, today, None, None)?;
    let names: HashMap<&str, &KeyRecord> = keys.iter().map(|r| (r.id.as_str(), r)).collect();
    let add = |m: &mut BTreeMap<String, Counts>, k: String, c: &Counts| {
        let e = m.entry(k).or_default();
        e.requests += c.requests;
        e.tokens_in += c.tokens_in;
        e.tokens_out += c.tokens_out;
    };
    let (mut by_group, mut by_key) = (BTreeMap::new(), BTreeMap::new());
    // The group of a directory user (`user:NAME`, no key record): the one its rows carry.
    let mut row_group: HashMap<&str, Option<String>> = HashMap::new();
    // Directory users have no key record: their name is the id's.
    let name_of = |id: &str| {
        names
            .get(id)
            .map(|k| k.name.clone())
            .or_else(|| id.strip_prefix("user:").map(str::to_string))
    };
    for r in &rows {
        row_group.insert(r.key_id.as_str(), r.group.clone());
        add(
            &mut by_group,
            r.group.clone().unwrap_or_default(),
            &r.counts,
        );
        add(&mut by_key, r.key_id.clone(), &r.counts);
    }
    // Used today and this month (whatever the range), for the quota columns.
    let (mut used_day, mut used_month) = (HashMap::<String, u64>::new(), HashMap::new());
    for r in &month_rows {
        let t = r.counts.tokens();
        let group = format!("g:{}", r.group.clone().unwrap_or_default());
        for who in [format!("k:{}", r.key_id), group] {
            *used_month.entry(who.clone()).or_default() += t;
            if r.day == today {
                *used_day.entry(who).or_default() += t;
            }
        }
    }
    let counts = |c: &Counts| json!({"requests": c.requests, "tokens_in": c.tokens_in, "tokens_out": c.tokens_out});
    let used = |v: &mut Value, who: &str| {
        v["used_today"] = used_day.get(who).copied().unwrap_or(0).into();
        v["used_this_month"] = used_month.get(who).copied().unwrap_or(0).into();
    };
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = counts(&r.counts);
            v["date"] = date_of(r.day).into();
            v["group"] = r.group.clone().into();
            v["key_id"] = r.key_id.clone().into();
            v["key_name"] = name_of(&r.key_id).into();
            v
        })
        .collect();
    let mut group_names: BTreeSet<String> = by_group.keys().cloned().collect();
    if q.group.is_none() && q.key.is_none() {
        group_names.extend(group_quotas.keys().cloned());
    }
    let groups: Vec<Value> = group_names
        .into_iter()
        .map(|g| {
            let mut v = counts(&by_group.get(&g).copied().unwrap_or_default());
            let quota = group_quotas.get(&g).copied().unwrap_or_default();
            used(&mut v, &format!("g:{g}"));
            v["group"] = (!g.is_empty()).then_some(g).into();
            v["tokens_per_day"] = quota.tokens_per_day.into();
            v["tokens_per_month"] = quota.tokens_per_month.into();
            v
        })
        .collect();
    let keys: Vec<Value> = by_key
        .iter()
        .map(|(id, c)| {
            let mut v = counts(c);
            let rec = names.get(id.as_str());
            used(&mut v, &format!("k:{id}"));
            v["key_id"] = id.clone().into();
            v["key_name"] = name_of(id).into();
            v["group"] = match rec {
                Some(k) => k.group.clone(),
                None => row_group.get(id.as_str()).cloned().flatten(),
            }
            .into();
            v["tokens_per_day"] = rec.and_then(|k| k.tokens_per_day).into();
            v["tokens_per_month"] = rec.and_then(|k| k.tokens_per_month).into();
            v
        })
        .collect();
    Ok(
        json!({"object": "usage", "from": date_of(q.from), "to": date_of(q.to),
        "data": data, "groups": groups, "keys": keys}),
    )
}

/// `GET /v1/admin/usage?from=&to=&group=&key=`.
pub async fn usage(c: Call) -> Result<Response<Body>, ApiError> {
    let app = c.app.clone();
    let usage = app
        .usage
        .get()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("this server counts no usage"))?;
    let today = day_of(crate::util::unix_now());
    let pairs = c.query_pairs()?;
    let pairs = pairs.iter().map(|(k, v)| (k.as_str(), v.clone()));
    let q = UsageQuery::parse(pairs, today).map_err(|(p, m)| ApiError::invalid_param(&p, m))?;
    let quotas = app.config().group_quotas;
    let keys = app.keys().clone();
    let v = crate::util::blocking(move || {
        let records = keys
            .list()
            .map_err(|e| ApiError::internal(format!("key store: {e}")))?;
        report(&usage, &records, &quotas, &q, today).map_err(|e| ApiError::store("usage: ", &e))
    })
    .await?;
    Ok(super::json_response(StatusCode::OK, &v))
}
