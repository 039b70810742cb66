//! Name constraints of a generated CA: the local DNS suffixes and networks it may sign for.

use std::net::IpAddr;

use rcgen::{CidrSubnet, GeneralSubtree, NameConstraints};

use super::*;

/// DNS suffixes a generated CA may sign for besides the machine's own names: names that are
/// local by definition (RFC 6762 `.local`, RFC 8375 `home.arpa`, ICANN's private-use
/// `.internal`, `localhost`).
pub(super) const LOCAL_DNS: &[&str] = &["localhost", "local", "home.arpa", "internal"];

/// Address ranges a generated CA may sign for: loopback, RFC 1918 private, shared (CGNAT,
/// also used by overlay VPNs), link-local, IPv6 unique-local and link-local.
pub(super) fn local_nets() -> Vec<(IpAddr, u8)> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    vec![
        (Ipv4Addr::new(127, 0, 0, 0).into(), 8),
        (Ipv4Addr::new(10, 0, 0, 0).into(), 8),
        (Ipv4Addr::new(172, 16, 0, 0).into(), 12),
        (Ipv4Addr::new(192, 168, 0, 0).into(), 16),
        (Ipv4Addr::new(100, 64, 0, 0).into(), 10),
        (Ipv4Addr::new(169, 254, 0, 0).into(), 16),
        (Ipv6Addr::LOCALHOST.into(), 128),
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0).into(), 7),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0).into(), 10),
    ]
}

/// Name constraints of a new local CA: what its server certificates may name (the DNS names
/// among `names`, [`LOCAL_DNS`], [`local_nets`]). A stolen `ca.key` cannot then sign a
/// certificate that clients trusting `ca.pem` accept for a public site.
pub(super) fn local_name_constraints(names: &[String]) -> NameConstraints {
    let mut dns: Vec<String> = LOCAL_DNS.iter().map(|s| (*s).to_string()).collect();
    for n in names {
        let n = n.to_ascii_lowercase();
        if n.parse::<IpAddr>().is_err() && is_dns_name(&n) && !dns.iter().any(|d| dns_within(&n, d))
        {
            dns.push(n);
        }
    }
    NameConstraints {
        permitted_subtrees: dns
            .into_iter()
            .map(GeneralSubtree::DnsName)
            .chain(local_nets().into_iter().map(|(ip, bits)| {
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, bits))
            }))
            .collect(),
        excluded_subtrees: Vec::new(),
    }
}

/// `name` is `subtree` or below it (RFC 5280 dNSName constraint matching).
pub(super) fn dns_within(name: &str, subtree: &str) -> bool {
    let (name, subtree) = (name.to_ascii_lowercase(), subtree.to_ascii_lowercase());
    name == subtree || name.ends_with(&format!(".{subtree}"))
}

pub(super) const OID_NAME_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x1e];

/// The permitted subtrees of a CA certificate's name constraints.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Permitted {
    pub(super) dns: Vec<String>,
    /// Address and mask, both 4 or both 16 bytes.
    nets: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Permitted {
    /// `None` when the certificate has no name constraints (or none that permit).
    pub(super) fn of(ca_der: &[u8]) -> Option<Permitted> {
        let value = manage::find_extension(ca_der, OID_NAME_CONSTRAINTS)?;
        let (_, constraints, _) = der_tlv(value)?;
        let (_, subtrees) = der_items(constraints).find(|(tag, _)| *tag == 0xa0)?;
        let mut out = Permitted {
            dns: Vec::new(),
            nets: Vec::new(),
        };
        for (_, subtree) in der_items(subtrees) {
            let (tag, base, _) = der_tlv(subtree)?;
            match tag {
                0x82 => out.dns.push(String::from_utf8_lossy(base).into_owned()),
                0x87 if base.len() == 8 || base.len() == 32 => {
                    let (addr, mask) = base.split_at(base.len() / 2);
                    out.nets.push((addr.to_vec(), mask.to_vec()));
                }
                _ => {}
            }
        }
        Some(out)
    }

    pub(super) fn allows(&self, name: &str) -> bool {
        match name.parse::<IpAddr>() {
            Ok(ip) => {
                let bytes = match ip {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                self.nets.iter().any(|(addr, mask)| {
                    addr.len() == bytes.len()
                        && bytes
                            .iter()
                            .zip(addr)
                            .zip(mask)
                            .all(|((b, a), m)| b & m == a & m)
                })
            }
            Err(_) => self.dns.iter().any(|d| dns_within(name, d)),
        }
    }
}
