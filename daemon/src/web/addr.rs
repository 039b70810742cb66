//! Which IP addresses an outbound fetch may connect to.
//!
//! [`classify`] names the special-purpose range an address lies in (loopback, private,
//! link-local, …, after the IANA special-purpose registries); anything it does not name is
//! a public unicast address. IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64,
//! 6to4) are judged by the IPv4 address they reach. [`Policy`] refuses every classified
//! address unless an administrator's `allow` CIDR covers it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A special-purpose range, as named in refusal messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `0.0.0.0`, `::`: Linux connects them to the local host.
    Unspecified,
    /// `0.0.0.0/8` other than `0.0.0.0`.
    ThisNetwork,
    Loopback,
    /// RFC 1918, unique local `fc00::/7`, deprecated site-local `fec0::/10`, local-use
    /// NAT64 `64:ff9b:1::/48`.
    Private,
    /// Carrier-grade NAT `100.64.0.0/10` (RFC 6598).
    Shared,
    LinkLocal,
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// TEST-NET-1/2/3, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15`, `2001:2::/48`.
    Benchmarking,
    /// Everything else that is not public unicast: `240.0.0.0/4`, IETF protocol
    /// assignments, IPv4-compatible IPv6, discard-only, unassigned IPv6 outside `2000::/3`.
    Reserved,
}

impl Class {
    /// "a loopback address", to follow "10.0.0.1 is".
    pub fn phrase(self) -> &'static str {
        match self {
            Class::Unspecified => "the unspecified address",
            Class::ThisNetwork => "a \"this network\" address",
            Class::Loopback => "a loopback address",
            Class::Private => "a private address",
            Class::Shared => "a shared (carrier-grade NAT) address",
            Class::LinkLocal => "a link-local address",
            Class::Multicast => "a multicast address",
            Class::Broadcast => "the broadcast address",
            Class::Documentation => "a documentation address",
            Class::Benchmarking => "a benchmarking address",
            Class::Reserved => "a reserved address",
        }
    }
}

fn v4_in(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn v6_in(ip: Ipv6Addr, net: u128, len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    u128::from(ip) & mask == net & mask
}

/// The special-purpose range of an IPv4 address, `None` for public unicast.
fn classify_v4(ip: Ipv4Addr) -> Option<Class> {
    let c = |net, len| v4_in(ip, net, len);
    Some(if ip.is_unspecified() {
        Class::Unspecified
    } else if c([0, 0, 0, 0], 8) {
        Class::ThisNetwork
    } else if c([127, 0, 0, 0], 8) {
        Class::Loopback
    } else if c([10, 0, 0, 0], 8) || c([172, 16, 0, 0], 12) || c([192, 168, 0, 0], 16) {
        Class::Private
    } else if c([100, 64, 0, 0], 10) {
        Class::Shared
    } else if c([169, 254, 0, 0], 16) {
        Class::LinkLocal
    } else if c([192, 0, 2, 0], 24) || c([198, 51, 100, 0], 24) || c([203, 0, 113, 0], 24) {
        Class::Documentation
    } else if c([198, 18, 0, 0], 15) {
        Class::Benchmarking
    } else if c([224, 0, 0, 0], 4) {
        Class::Multicast
    } else if ip.is_broadcast() {
        Class::Broadcast
    } else if c([240, 0, 0, 0], 4) || c([192, 0, 0, 0], 24) || c([192, 88, 99, 0], 24) {
        // Future use; IETF protocol assignments; the retired 6to4 relay anycast.
        Class::Reserved
    } else {
        return None;
    })
}

/// The IPv4 address an IPv6 address reaches when it only wraps one: IPv4-mapped
/// (`::ffff:a.b.c.d`, what a dual-stack socket makes of IPv4), the well-known NAT64 prefix
/// `64:ff9b::/96` and 6to4 `2002:AABB:CCDD::/48`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if v6_in(ip, 0x0064_ff9b << 96, 96) {
        return Some(Ipv4Addr::from(bits as u32));
    }
    if v6_in(ip, 0x2002 << 112, 16) {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

fn classify_v6(ip: Ipv6Addr) -> Option<Class> {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let c = |net: u128, len| v6_in(ip, net, len);
    Some(if ip.is_unspecified() {
        Class::Unspecified
    } else if ip.is_loopback() {
        Class::Loopback
    } else if c(0, 96) {
        // IPv4-compatible (`::a.b.c.d`), deprecated since 2006 and routed nowhere.
        Class::Reserved
    } else if c(0xfc00 << 112, 7) || c(0xfec0 << 112, 10) || c(0x0064_ff9b_0001 << 80, 48) {
        Class::Private
    } else if c(0xfe80 << 112, 10) {
        Class::LinkLocal
    } else if c(0xff00 << 112, 8) {
        Class::Multicast
    } else if c(0x2001_0db8 << 96, 32) || c(0x3fff << 112, 20) {
        Class::Documentation
    } else if c(0x2001_0002 << 96, 48) {
        Class::Benchmarking
    } else if c(0x2001 << 112, 23) || !c(0x2000 << 112, 3) {
        // IETF protocol assignments (Teredo, ORCHID, …) and everything outside global
        // unicast (discard-only 100::/64 and the unassigned space).
        Class::Reserved
    } else {
        return None;
    })
}

/// The special-purpose range `ip` lies in; `None` for a public unicast address.
pub fn classify(ip: IpAddr) -> Option<Class> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is, so that one `allow` entry covers
/// both forms.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An address block, `10.1.0.0/16` or `fd00::/8` (a bare address is a block of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    /// Parse `addr/len` or a bare address; host bits are cleared (`10.1.2.3/16` is
    /// `10.1.0.0/16`). `None` when it is neither.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s.trim(), None),
        };
        let net = canonical(addr.parse::<IpAddr>().ok()?);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            // Digits only: `u8::from_str` would also take "+8".
            Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => l.parse().ok()?,
            Some(_) => return None,
            None => max,
        };
        if len > max {
            return None;
        }
        let net = match net {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        Some(Cidr { net, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => v4_in(ip, net.octets(), u32::from(self.len)),
            (IpAddr::V6(net), IpAddr::V6(ip)) => v6_in(ip, u128::from(net), u32::from(self.len)),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

/// An address a fetch may not connect to, and why: `host` is the URL's host (a name or the
/// address itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub host: String,
    pub ip: IpAddr,
    pub class: Class,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(h) if h == self.ip => write!(f, "{} is {}", self.ip, self.class.phrase())?,
            Ok(h) => write!(f, "{h} is {}, {}", self.ip, self.class.phrase())?,
            Err(_) => {
                write!(f, "{host} resolves to {}, {}", self.ip, self.class.phrase())?;
            }
        }
        f.write_str(" (allow it in [fetch] allow)")
    }
}

impl std::error::Error for Blocked {}

/// The address rule of a fetcher: public unicast addresses, plus the `allow` blocks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub allow: Vec<Cidr>,
}

impl Policy {
    /// `Ok` when `ip` may be connected to; `host` only words the refusal.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Blocked> {
        let canon = canonical(ip);
        match classify(canon) {
            Some(class) if !self.allow.iter().any(|c| c.contains(canon)) => Err(Blocked {
                host: host.to_string(),
                ip: canon,
                class,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<Class> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn ranges_are_classified() {
        use Class::*;
        let table: &[(&str, Option<Class>)] = &[
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(ThisNetwork)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("10.0.0.1", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(Private)),
            ("100.64.0.1", Some(Shared)),
            ("100.127.255.255", Some(Shared)),
            ("100.128.0.1", None),
            ("169.254.169.254", Some(LinkLocal)),
            ("192.0.0.8", Some(Reserved)),
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("198.18.0.1", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("198.20.0.1", None),
            ("192.88.99.1", Some(Reserved)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:0.0.0.0", Some(Unspecified)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Reserved)),
            ("::8.8.8.8", Some(Reserved)),
            ("64:ff9b::10.0.0.1", Some(Private)),
            ("64:ff9b::8.8.8.8", None),
            ("64:ff9b:1::1", Some(Private)),
            ("2002:7f00:1::1", Some(Loopback)),
            ("2002:c0a8:101::1", Some(Private)),
            ("2002:808:808::1", None),
            ("fc00::1", Some(Private)),
            ("fd12:3456::1", Some(Private)),
            ("fec0::1", Some(Private)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("2001:2::1", Some(Benchmarking)),
            ("2001::1", Some(Reserved)),
            ("100::1", Some(Reserved)),
            ("4000::1", Some(Reserved)),
            ("2606:4700::1111", None),
            ("2a00:1450:4001::200e", None),
        ];
        let wrong: Vec<String> = table
            .iter()
            .filter(|(ip, want)| class(ip) != *want)
            .map(|(ip, want)| format!("{ip}: {:?}, want {want:?}", class(ip)))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            Cidr::parse("10.1.2.3/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(Cidr::parse("10.0.0.7").unwrap().to_string(), "10.0.0.7/32");
        assert_eq!(Cidr::parse("fd00::1/8").unwrap().to_string(), "fd00::/8");
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        // The mapped form is the IPv4 block.
        assert_eq!(
            Cidr::parse("::ffff:127.0.0.0/8").unwrap().to_string(),
            "127.0.0.0/8"
        );
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn allow_blocks_open_classified_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let deny = Policy::default();
        let e = deny.check("10.0.0.1", ip("10.0.0.1")).unwrap_err();
        assert_eq!(e.class, Class::Private);
        assert_eq!(
            e.to_string(),
            "10.0.0.1 is a private address (allow it in [fetch] allow)"
        );
        let e = deny.check("localhost", ip("::1")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "localhost resolves to ::1, a loopback address (allow it in [fetch] allow)"
        );
        assert!(deny.check("x", ip("8.8.8.8")).is_ok());

        let allow = Policy {
            allow: vec![
                Cidr::parse("10.1.0.0/16").unwrap(),
                Cidr::parse("127.0.0.2/32").unwrap(),
                Cidr::parse("fd00:1::/32").unwrap(),
            ],
        };
        assert!(allow.check("h", ip("10.1.200.3")).is_ok());
        assert!(allow.check("h", ip("::ffff:10.1.0.9")).is_ok());
        assert!(allow.check("h", ip("10.2.0.1")).is_err());
        assert!(allow.check("h", ip("127.0.0.2")).is_ok());
        assert!(allow.check("h", ip("127.0.0.3")).is_err());
        assert!(allow.check("h", ip("fd00:1:2::3")).is_ok());
        assert!(allow.check("h", ip("fd00:2::3")).is_err());
        // A mapped address is refused as the IPv4 address it is.
        let e = allow
            .check("[::ffff:127.0.0.3]", ip("::ffff:127.0.0.3"))
            .unwrap_err();
        assert_eq!(e.ip, ip("127.0.0.3"));
        assert!(e
            .to_string()
            .starts_with("::ffff:127.0.0.3 is 127.0.0.3, a loopback address"));
    }
}
