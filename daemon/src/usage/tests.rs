use super::*;

const DEC_7: u64 = 1_796_601_600; // 2026-12-07T00:00:00Z

fn open(dir: &std::path::Path, now: u64) -> UsageStore {
    UsageStore::open(Store::open_in(dir, crate::schema::MIGRATIONS).unwrap(), now).unwrap()
}

fn c(r: u64, i: u64, o: u64) -> Counts {
    Counts {
        requests: r,
        tokens_in: i,
        tokens_out: o,
    }
}

#[test]
fn calendar_helpers_agree_with_the_civil_dates() {
    assert_eq!(u64::from(days_from_civil(2026, 12, 7)) * 86_400, DEC_7);
    let (first, next) = month_of(day_of(DEC_7));
    assert_eq!(first, days_from_civil(2026, 12, 1));
    assert_eq!(next, days_from_civil(2027, 1, 1));
    let (f, n) = month_of(days_from_civil(2028, 2, 29));
    assert_eq!((n - f), 29);
}

#[test]
fn counts_are_stored_once_and_survive_a_reopen() {
    let d = tempfile::tempdir().unwrap();
    {
        let u = open(d.path(), DEC_7);
        u.record("k1", Some("hr"), c(1, 10, 5), DEC_7 + 10);
        u.record("k1", Some("hr"), c(1, 3, 2), DEC_7 + 20);
        u.flush().unwrap();
        u.flush().unwrap(); // nothing pending: no double count
        u.record("k2", None, c(1, 7, 0), DEC_7 + 30);
        u.flush().unwrap();
        u.record("k2", None, c(1, 100, 100), DEC_7 + 40); // stored when the store closes
    }
    let u = open(d.path(), DEC_7 + 50);
    let rows = u.rows(day_of(DEC_7), day_of(DEC_7), None, None).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].group, None);
    assert_eq!(
        (rows[0].key_id.as_str(), rows[0].counts),
        ("k2", c(2, 107, 100))
    );
    assert_eq!(rows[1].group.as_deref(), Some("hr"));
    assert_eq!(rows[1].counts, c(2, 13, 7));
    assert_eq!(u.rows(0, u32::MAX - 1, Some("hr"), None).unwrap().len(), 1);
    assert_eq!(u.rows(0, u32::MAX - 1, None, Some("k2")).unwrap().len(), 1);
}

#[test]
fn pending_counts_show_in_rows_before_a_flush() {
    let d = tempfile::tempdir().unwrap();
    let u = open(d.path(), DEC_7);
    u.record("k", None, c(1, 1, 1), DEC_7);
    assert_eq!(
        u.rows(day_of(DEC_7), day_of(DEC_7), None, None).unwrap()[0].counts,
        c(1, 1, 1)
    );
}

#[test]
fn a_daily_quota_refuses_once_reached_and_resets_at_midnight() {
    let d = tempfile::tempdir().unwrap();
    let u = open(d.path(), DEC_7);
    let q = Quota {
        tokens_per_day: Some(100),
        tokens_per_month: None,
    };
    u.record("k", None, c(1, 60, 39), DEC_7 + 5);
    assert!(u.check(("k", "laptop"), q, None, DEC_7 + 6).is_ok());
    u.record("k", None, c(1, 1, 0), DEC_7 + 7);
    let e = u.check(("k", "laptop"), q, None, DEC_7 + 8).unwrap_err();
    assert_eq!(
        (e.who.as_str(), e.period, e.used, e.limit),
        ("key laptop", "day", 100, 100)
    );
    assert_eq!(e.resets_at, DEC_7 + 86_400);
    assert!(u.check(("k", "laptop"), q, None, DEC_7 + 86_400).is_ok());
}

#[test]
fn group_and_month_quotas_count_every_key_of_the_group_and_survive_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let q = Quota {
        tokens_per_day: None,
        tokens_per_month: Some(50),
    };
    {
        let u = open(d.path(), DEC_7);
        u.record("a", Some("hr"), c(1, 20, 0), DEC_7 - 3 * 86_400);
        u.record("b", Some("hr"), c(1, 20, 0), DEC_7);
        u.flush().unwrap();
    }
    let u = open(d.path(), DEC_7 + 60);
    assert!(u
        .check(("c", "c"), Quota::default(), Some(("hr", q)), DEC_7 + 60)
        .is_ok());
    u.record("c", Some("hr"), c(1, 5, 5), DEC_7 + 61);
    let e = u
        .check(("c", "c"), Quota::default(), Some(("hr", q)), DEC_7 + 62)
        .unwrap_err();
    assert_eq!(
        (e.who.as_str(), e.period, e.used),
        ("group hr", "month", 50)
    );
    assert_eq!(e.resets_at, u64::from(days_from_civil(2027, 1, 1)) * 86_400);
    // Another group is not affected; the next month starts from zero.
    assert!(u
        .check(("d", "d"), Quota::default(), Some(("it", q)), DEC_7 + 62)
        .is_ok());
    let jan = u64::from(days_from_civil(2027, 1, 1)) * 86_400;
    assert!(u
        .check(("c", "c"), Quota::default(), Some(("hr", q)), jan)
        .is_ok());
}

#[test]
fn group_names_are_checked() {
    assert!(valid_group("hr") && valid_group("finance-eu_2"));
    for bad in ["", "HR", "a|b", "with space", &"x".repeat(65)] {
        assert!(!valid_group(bad), "{bad}");
    }
}
