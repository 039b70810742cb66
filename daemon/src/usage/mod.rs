//! Usage counters and quotas: requests and tokens per API key and per usage group
//! (department), per UTC day, kept in redb; months are sums of their days.
//!
//! **Counting.** A finished call adds its counts to memory at once (quota checks see them at
//! once) and to a pending set; [`UsageStore::flush`], run every second, adds the pending set
//! to the stored rows in one write transaction and clears it only when that commits. So a
//! `kill -9` loses at most the last second of counts, and nothing is ever counted twice: a
//! transaction that did not commit left the rows as they were, and its counts are still
//! pending.
//!
//! **Rows.** `usage`: `"DAY|GROUP|KEY_ID"` → (requests, tokens_in, tokens_out), DAY the UTC
//! day number since 1970 (six digits, so rows sort by day), GROUP the key's group when the
//! call was made ("" for none). A key moved to another group keeps its earlier rows where
//! they were counted.
//!
//! **Quotas** are on tokens (in + out) per UTC day and per UTC month, for a key (set when it
//! is made) and for a group (`[usage.groups.NAME]` in the config). A call is refused when
//! what its key or group has used has reached a quota; the call that reaches it completes.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Mutex;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::store::{Migration, Store, StoreError};
use crate::util::lock;

pub const USAGE: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("usage");

/// Schema step 4: the usage table.
pub const USAGE_V4: Migration = Migration::new(4, "usage", migrate_v4);

fn migrate_v4(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(USAGE)?;
    Ok(())
}

/// A group name: 1-64 lowercase letters, digits, `-` or `_` (it is part of row keys).
pub fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 64
        && g.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Token quotas (in + out); `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    #[serde(default)]
    pub tokens_per_month: Option<u64>,
}

/// `[usage]`: quotas of the usage groups (`[usage.groups.NAME]`, live on reload).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    pub groups: std::collections::BTreeMap<String, Quota>,
}

impl UsageConfig {
    /// Group names must be what keys can carry; quotas at least 1.
    pub fn validate(&self) -> Result<(), String> {
        for (g, q) in &self.groups {
            if !valid_group(g) {
                return Err(format!(
                    "usage.groups.{g}: a group name is 1-64 lowercase letters, digits, '-' or '_'"
                ));
            }
            if q.tokens_per_day == Some(0) || q.tokens_per_month == Some(0) {
                return Err(format!(
                    "usage.groups.{g}: quotas must be at least 1 (leave one out for no quota)"
                ));
            }
        }
        Ok(())
    }
}

/// Requests and tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.tokens_in += o.tokens_in;
        self.tokens_out += o.tokens_out;
    }

    pub fn tokens(&self) -> u64 {
        self.tokens_in + self.tokens_out
    }
}

/// One stored row: a key's counts in a group on a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// UTC day number since 1970-01-01.
    pub day: u32,
    pub group: Option<String>,
    pub key_id: String,
    #[serde(flatten)]
    pub counts: Counts,
}

/// A quota and its use: the one a call hit ([`UsageStore::check`]) or one of a key's
/// ([`UsageStore::standing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverQuota {
    /// `key NAME` or `group NAME`.
    pub who: String,
    /// `key` or `group`: whose quota it is.
    pub applies_to: &'static str,
    /// `day` or `month`.
    pub period: &'static str,
    pub used: u64,
    pub limit: u64,
    /// Unix seconds when the period ends (the next UTC midnight or first of a month).
    pub resets_at: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Period {
    Day(u32),
    /// The day number of the month's first day.
    Month(u32),
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Who {
    Key(String),
    Group(String),
}

#[derive(Default)]
struct Inner {
    /// Counted, not yet stored: (day, group, key) → counts.
    pending: HashMap<(u32, String, String), Counts>,
    /// Tokens used this day and this month (stored + pending), for quota checks.
    totals: HashMap<(Period, Who), u64>,
    /// The month the totals were loaded for.
    month: u32,
}

/// The counters. Cheap to share behind an `Arc`.
pub struct UsageStore {
    store: Store,
    inner: Mutex<Inner>,
    /// Serializes flushes (the timer's and the final one at shutdown).
    flushing: Mutex<()>,
}

pub fn day_of(unix_s: u64) -> u32 {
    (unix_s / 86_400) as u32
}

/// The first day of the month `day` is in, and the first day of the next month.
pub fn month_of(day: u32) -> (u32, u32) {
    let (y, m, d) = crate::util::civil_from_days(i64::from(day));
    let first = day - (d as u32 - 1);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (first, days_from_civil(ny, nm, 1))
}

/// Day number of a civil date (the inverse of `util::civil_from_days`, same algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> u32 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) as u32
}

fn row_key(day: u32, group: &str, key_id: &str) -> String {
    format!("{day:06}|{group}|{key_id}")
}

fn parse_key(k: &str) -> Option<(u32, &str, &str)> {
    let mut it = k.splitn(3, '|');
    let day = it.next()?.parse().ok()?;
    Some((day, it.next()?, it.next()?))
}

impl UsageStore {
    /// Open over `store` (whose schema includes [`USAGE_V4`]), loading this month's totals.
    pub fn open(store: Store, now: u64) -> Result<UsageStore, StoreError> {
        let u = UsageStore {
            store,
            inner: Mutex::default(),
            flushing: Mutex::new(()),
        };
        u.load_month(day_of(now))?;
        Ok(u)
    }

    fn load_month(&self, today: u32) -> Result<(), StoreError> {
        let (first, next) = month_of(today);
        let mut totals = HashMap::new();
        let tx = self.store.begin_read()?;
        let table = tx.open_table(USAGE)?;
        let (lo, hi) = (format!("{first:06}|"), format!("{next:06}|"));
        for row in table.range(lo.as_str()..hi.as_str())? {
            let (k, v) = row?;
            let Some((day, group, key)) = parse_key(k.value()) else {
                continue;
            };
            let (_, tin, tout) = v.value();
            add_totals(&mut totals, day, first, group, key, tin + tout);
        }
        let mut inner = lock(&self.inner);
        // Counts recorded since are pending and must stay in the totals.
        for ((day, group, key), c) in &inner.pending {
            if *day >= first && *day < next {
                add_totals(&mut totals, *day, first, group, key, c.tokens());
            }
        }
        inner.totals = totals;
        inner.month = first;
        Ok(())
    }

    /// Count one finished call of `key_id` (in `group`, if it has one) at `now`.
    pub fn record(&self, key_id: &str, group: Option<&str>, c: Counts, now: u64) {
        let day = day_of(now);
        let (first, _) = month_of(day);
        let group = group.unwrap_or("");
        let mut inner = lock(&self.inner);
        if inner.month != first {
            // A new month: earlier totals no longer matter for quotas.
            inner.totals.clear();
            inner.month = first;
        }
        inner
            .pending
            .entry((day, group.to_string(), key_id.to_string()))
            .or_default()
            .add(&c);
        add_totals(&mut inner.totals, day, first, group, key_id, c.tokens());
    }

    /// Store what is pending, in one transaction; kept pending if it fails.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _one = lock(&self.flushing);
        let pending: Vec<_> = {
            let inner = lock(&self.inner);
            if inner.pending.is_empty() {
                return Ok(());
            }
            inner.pending.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        let tx = self.store.begin_write()?;
        {
            let mut table = tx.open_table(USAGE)?;
            for ((day, group, key), c) in &pending {
                let k = row_key(*day, group, key);
                let (r, i, o) = table.get(k.as_str())?.map_or((0, 0, 0), |v| v.value());
                table.insert(
                    k.as_str(),
                    (r + c.requests, i + c.tokens_in, o + c.tokens_out),
                )?;
            }
        }
        tx.commit()?;
        // Take off exactly what was stored: calls counted meanwhile stay pending.
        let mut inner = lock(&self.inner);
        for (k, c) in pending {
            if let Some(p) = inner.pending.get_mut(&k) {
                p.requests -= c.requests;
                p.tokens_in -= c.tokens_in;
                p.tokens_out -= c.tokens_out;
                if *p == Counts::default() {
                    inner.pending.remove(&k);
                }
            }
        }
        Ok(())
    }

    /// The first quota among `key` (with `key_quota`) and its group (with `group_quota`)
    /// that is used up at `now`.
    pub fn check(
        &self,
        key: (&str, &str),
        key_quota: Quota,
        group: Option<(&str, Quota)>,
        now: u64,
    ) -> Result<(), OverQuota> {
        match self
            .standing(key, key_quota, group, now)
            .into_iter()
            .find(|q| q.used >= q.limit)
        {
            Some(q) => Err(q),
            None => Ok(()),
        }
    }

    /// Every quota of `key` (`(id, name)`, with `key_quota`) and of its group at `now`, with
    /// the tokens used so far in its period: the key's day and month, then the group's.
    pub fn standing(
        &self,
        key: (&str, &str),
        key_quota: Quota,
        group: Option<(&str, Quota)>,
        now: u64,
    ) -> Vec<OverQuota> {
        let day = day_of(now);
        let (first, next) = month_of(day);
        let inner = lock(&self.inner);
        let mut checks = vec![(
            Who::Key(key.0.to_string()),
            "key",
            format!("key {}", key.1),
            key_quota,
        )];
        if let Some((g, q)) = group {
            checks.push((Who::Group(g.to_string()), "group", format!("group {g}"), q));
        }
        let mut out = Vec::new();
        for (who, applies_to, name, q) in checks {
            for (period, limit, label, resets_day) in [
                (Period::Day(day), q.tokens_per_day, "day", day + 1),
                (Period::Month(first), q.tokens_per_month, "month", next),
            ] {
                let Some(limit) = limit else { continue };
                let used = if inner.month == first {
                    inner
                        .totals
                        .get(&(period, who.clone()))
                        .copied()
                        .unwrap_or(0)
                } else {
                    0
                };
                out.push(OverQuota {
                    who: name.clone(),
                    applies_to,
                    period: label,
                    used,
                    limit,
                    resets_at: u64::from(resets_day) * 86_400,
                });
            }
        }
        out
    }

    /// Stored and pending rows from day `from` to day `to` (inclusive), of one group or key
    /// when given, ordered by day, group, key.
    pub fn rows(
        &self,
        from: u32,
        to: u32,
        group: Option<&str>,
        key_id: Option<&str>,
    ) -> Result<Vec<Row>, StoreError> {
        let mut all: HashMap<(u32, String, String), Counts> = HashMap::new();
        {
            let tx = self.store.begin_read()?;
            let table = tx.open_table(USAGE)?;
            let (lo, hi) = (format!("{from:06}|"), format!("{:06}|", to + 1));
            for row in table.range(lo.as_str()..hi.as_str())? {
                let (k, v) = row?;
                let Some((day, g, key)) = parse_key(k.value()) else {
                    continue;
                };
                let (r, i, o) = v.value();
                all.entry((day, g.to_string(), key.to_string()))
                    .or_default()
                    .add(&Counts {
                        requests: r,
                        tokens_in: i,
                        tokens_out: o,
                    });
            }
        }
        for ((day, g, key), c) in &lock(&self.inner).pending {
            if (from..=to).contains(day) {
                all.entry((*day, g.clone(), key.clone()))
                    .or_default()
                    .add(c);
            }
        }
        let mut rows: Vec<Row> = all
            .into_iter()
            .filter(|((_, g, k), _)| {
                group.is_none_or(|want| want == g) && key_id.is_none_or(|want| want == k)
            })
            .map(|((day, g, key_id), counts)| Row {
                day,
                group: (!g.is_empty()).then_some(g),
                key_id,
                counts,
            })
            .collect();
        rows.sort_by(|a, b| (a.day, &a.group, &a.key_id).cmp(&(b.day, &b.group, &b.key_id)));
        Ok(rows)
    }
}

impl Drop for UsageStore {
    /// The last counts go to the file when the daemon stops.
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "usage counters of the last second not stored");
        }
    }
}

/// `YYYY-MM-DD` of a day number.
pub fn date_of(day: u32) -> String {
    let (y, m, d) = crate::util::civil_from_days(i64::from(day));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day number of `YYYY-MM-DD`, or `None` when it is not a real date.
pub fn parse_date(s: &str) -> Option<u32> {
    let mut it = s.split('-');
    let (y, m, d): (i64, i64, i64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    if it.next().is_some() || !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let day = days_from_civil(y, m, d);
    // 2026-02-30 would land in March: not a date.
    (crate::util::civil_from_days(i64::from(day)) == (y, m, d)).then_some(day)
}

fn add_totals(
    totals: &mut HashMap<(Period, Who), u64>,
    day: u32,
    month: u32,
    group: &str,
    key: &str,
    tokens: u64,
) {
    let mut whos = vec![Who::Key(key.to_string())];
    if !group.is_empty() {
        whos.push(Who::Group(group.to_string()));
    }
    for who in whos {
        *totals.entry((Period::Day(day), who.clone())).or_default() += tokens;
        *totals.entry((Period::Month(month), who)).or_default() += tokens;
    }
}
