//! Just enough DER to read a certificate's `notAfter`.

use super::*;

/// The `notAfter` of an X.509 certificate (Unix seconds).
pub fn cert_not_after(der: &[u8]) -> Option<i64> {
    manage::CertInfo::parse(der).map(|c| c.not_after)
}

/// One DER tag-length-value: `(tag, content, rest)`.
pub(super) fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The TLVs of `input` one after another, as `(tag, content)`; ends at the first malformed
/// one.
pub(super) fn der_items(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, content, after) = der_tlv(input)?;
        input = after;
        Some((tag, content))
    })
}

/// UTCTime (`YYMMDDHHMMSSZ`, 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, 0x18).
pub(super) fn parse_der_time(tag: u8, bytes: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(bytes).ok()?;
    let s = s.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i32 = s.get(..2)?.parse().ok()?;
            // RFC 5280: YY >= 50 means 19YY.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    if rest.len() != 10 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |i: usize| rest.get(i..i + 2).and_then(|x| x.parse::<u8>().ok());
    let month = time::Month::try_from(num(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, num(2)?).ok()?;
    let dt = date.with_hms(num(4)?, num(6)?, num(8)?).ok()?;
    Some(dt.assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_time_parsing() {
        assert_eq!(parse_der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(parse_der_time(0x18, b"20000101000000Z"), Some(946_684_800));
        assert_eq!(parse_der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(parse_der_time(0x17, b"7001010000Z"), None);
        assert_eq!(parse_der_time(0x05, b"700101000000Z"), None);
        assert_eq!(cert_not_after(&[0x30, 0x03, 0x02, 0x01, 0x00]), None);
        assert_eq!(cert_not_after(&[]), None);
    }
}
