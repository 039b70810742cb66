//! Admission: the open connections, their activity and the caps (see the module doc of
//! [`super`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

use crate::util::lock;

use super::*;

/// The address a per-address cap counts: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what
/// a dual-stack `[::]` listener reports for IPv4 clients) is its IPv4 address.
pub fn client_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The address is at `max_connections_per_ip` and all its connections are busy.
    PerAddress,
    /// The server is at `max_connections` and all connections are busy.
    AllBusy,
}

impl Refused {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Refused::PerAddress => "max_connections_per_ip",
            Refused::AllBusy => "max_connections",
        }
    }
}

/// Open connections: per-connection state (requests in flight, last activity) and the
/// counts the caps apply to. One short mutex; eviction scans the open connections, which
/// only happens at a cap.
#[derive(Debug, Default)]
pub struct Registry {
    pub(super) inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    pub(super) next_id: u64,
    /// Open, not evicted.
    pub(super) live: usize,
    pub(super) per_address: HashMap<IpAddr, usize>,
    pub(super) conns: HashMap<u64, Entry>,
}

#[derive(Debug)]
pub(super) struct Entry {
    address: IpAddr,
    in_flight: usize,
    requests: u64,
    /// Admission, then the start and end of each request.
    last_active: Instant,
    /// Evicted: no longer counted, closing.
    evicted: bool,
    evict: Arc<Notify>,
}

/// A snapshot of one connection's activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    pub in_flight: usize,
    pub requests: u64,
    pub last_active: Instant,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Admit a connection from `peer`, evicting idle connections to stay within the caps.
    pub fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        now: Instant,
        max_total: usize,
        max_per_address: usize,
    ) -> Result<Slot, Refused> {
        let address = client_address(peer);
        let mut inner = self.lock();
        if inner.per_address.get(&address).copied().unwrap_or(0) >= max_per_address
            && !inner.evict_idlest(|e| e.address == address)
        {
            return Err(Refused::PerAddress);
        }
        // A lowered cap (reload) may leave more than one to evict.
        while inner.live >= max_total {
            if !inner.evict_idlest(|_| true) {
                return Err(Refused::AllBusy);
            }
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let evict = Arc::new(Notify::new());
        inner.live += 1;
        *inner.per_address.entry(address).or_insert(0) += 1;
        inner.conns.insert(
            id,
            Entry {
                address,
                in_flight: 0,
                requests: 0,
                last_active: now,
                evicted: false,
                evict: evict.clone(),
            },
        );
        Ok(Slot {
            registry: self.clone(),
            id,
            evict,
            progress: Arc::new(Progress::default()),
        })
    }

    /// Open connections (evicted ones that are still closing not counted).
    pub fn live(&self) -> usize {
        self.lock().live
    }

    /// Open connections of one address (as [`client_address`] counts it).
    pub fn from_address(&self, ip: IpAddr) -> usize {
        self.lock()
            .per_address
            .get(&client_address(ip))
            .copied()
            .unwrap_or(0)
    }

    fn activity(&self, id: u64) -> Option<Activity> {
        self.lock().conns.get(&id).map(|e| Activity {
            in_flight: e.in_flight,
            requests: e.requests,
            last_active: e.last_active,
        })
    }

    fn begin(&self, id: u64, now: Instant) {
        if let Some(e) = self.lock().conns.get_mut(&id) {
            e.in_flight += 1;
            e.requests += 1;
            e.last_active = now;
        }
    }

    /// Returns the requests still in flight.
    fn end(&self, id: u64, now: Instant) -> usize {
        let mut inner = self.lock();
        let Some(e) = inner.conns.get_mut(&id) else {
            return 0;
        };
        e.in_flight = e.in_flight.saturating_sub(1);
        e.last_active = now;
        e.in_flight
    }

    fn remove(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(e) = inner.conns.remove(&id) {
            if !e.evicted {
                inner.uncount(e.address);
            }
        }
    }
}

impl Inner {
    fn uncount(&mut self, address: IpAddr) {
        self.live = self.live.saturating_sub(1);
        if let Some(n) = self.per_address.get_mut(&address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_address.remove(&address);
            }
        }
    }

    /// Evict the connection among `which` that has had no request in flight for the longest
    /// (ties: the older connection); `false` when every one of them is busy.
    fn evict_idlest(&mut self, which: impl Fn(&Entry) -> bool) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, e)| !e.evicted && e.in_flight == 0 && which(e))
            .min_by_key(|(id, e)| (e.last_active, **id))
            .map(|(id, _)| *id);
        let Some(id) = victim else {
            return false;
        };
        let Some(e) = self.conns.get_mut(&id) else {
            return false;
        };
        e.evicted = true;
        e.evict.notify_one();
        let address = e.address;
        self.uncount(address);
        true
    }
}

/// One admitted connection; leaving the registry when dropped.
#[derive(Debug)]
pub struct Slot {
    pub(super) registry: Arc<Registry>,
    pub(super) id: u64,
    pub(super) evict: Arc<Notify>,
    pub(super) progress: Arc<Progress>,
}

impl Slot {
    /// A request started; it counts as in flight until the guard is dropped (with its
    /// response body).
    pub fn begin_request(&self) -> InFlight {
        self.registry.begin(self.id, Instant::now());
        InFlight {
            registry: self.registry.clone(),
            id: self.id,
            progress: self.progress.clone(),
        }
    }

    pub fn activity(&self) -> Option<Activity> {
        self.registry.activity(self.id)
    }

    /// Resolves once the registry evicted this connection.
    pub(super) async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

/// A request in flight (see [`Slot::begin_request`]).
#[derive(Debug)]
pub struct InFlight {
    pub(super) registry: Arc<Registry>,
    pub(super) id: u64,
    pub(super) progress: Arc<Progress>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.registry.end(self.id, Instant::now()) == 0 {
            // No handler waits for a body now: an HTTP/2 stream whose body the server did not
            // read (e.g. answered 413) must not count as owed.
            self.progress.lock().settle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_cap_evicts_that_address_idlest_then_refuses_when_busy() {
        let reg = Arc::new(Registry::default());
        let t = Instant::now();
        let a = ip("10.0.0.1");
        let s1 = reg.admit(a, t, 100, 2).unwrap();
        let s2 = reg.admit(a, t + Duration::from_secs(1), 100, 2).unwrap();
        let other = reg.admit(ip("10.0.0.2"), t, 100, 2).unwrap();
        assert_eq!(reg.from_address(a), 2);
        // Third from `a`: s1 (idle longest) is evicted, not the other address's connection.
        let s3 = reg.admit(a, t + Duration::from_secs(2), 100, 2).unwrap();
        assert_eq!(reg.from_address(a), 2);
        assert!(reg.lock().conns[&s1.id].evicted);
        assert!(!reg.lock().conns[&other.id].evicted);
        // All of `a`'s connections busy: refused, whatever room the server has.
        let _b2 = s2.begin_request();
        let _b3 = s3.begin_request();
        assert_eq!(
            reg.admit(a, t + Duration::from_secs(3), 100, 2)
                .unwrap_err(),
            Refused::PerAddress
        );
        assert!(reg.admit(ip("10.0.0.3"), t, 100, 2).is_ok());
        // Dropping the evicted slot does not count it twice.
        drop(s1);
        assert_eq!(reg.from_address(a), 2);
        drop(s2);
        drop(_b2);
        assert_eq!(reg.from_address(a), 1);
    }

    #[test]
    fn global_cap_evicts_the_longest_idle_and_never_a_busy_one() {
        let reg = Arc::new(Registry::default());
        let t = Instant::now();
        let at = |s| t + Duration::from_secs(s);
        let oldest_busy = reg.admit(ip("10.0.0.1"), at(0), 3, 100).unwrap();
        let idle_old = reg.admit(ip("10.0.0.2"), at(1), 3, 100).unwrap();
        let idle_new = reg.admit(ip("10.0.0.3"), at(2), 3, 100).unwrap();
        let busy = oldest_busy.begin_request();
        // `idle_new` finished a request after `idle_old` was admitted: `idle_old` has been
        // idle the longest.
        reg.begin(idle_new.id, at(3));
        reg.end(idle_new.id, at(4));
        let n1 = reg.admit(ip("10.0.0.9"), at(5), 3, 100).unwrap();
        assert!(reg.lock().conns[&idle_old.id].evicted);
        assert!(!reg.lock().conns[&oldest_busy.id].evicted);
        assert_eq!(reg.live(), 3);
        let n2 = reg.admit(ip("10.0.0.9"), at(6), 3, 100).unwrap();
        assert!(reg.lock().conns[&idle_new.id].evicted);
        // Left: the busy one and n1, n2 (idle): n1 goes next.
        let _n3 = reg.admit(ip("10.0.0.9"), at(7), 3, 100).unwrap();
        assert!(reg.lock().conns[&n1.id].evicted);
        let _b2 = n2.begin_request();
        let _b3 = _n3.begin_request();
        // Everyone busy: refused, and the busy connections stay.
        assert_eq!(
            reg.admit(ip("10.0.0.8"), at(8), 3, 100).unwrap_err(),
            Refused::AllBusy
        );
        assert!(!reg.lock().conns[&oldest_busy.id].evicted);
        drop(busy);
        // Its request ended at `at(8)`-ish (now): idle again, so evictable.
        assert!(reg.admit(ip("10.0.0.8"), Instant::now(), 3, 100).is_ok());
    }

    #[test]
    fn a_lowered_cap_evicts_down_to_it() {
        let reg = Arc::new(Registry::default());
        let t = Instant::now();
        let slots: Vec<Slot> = (0..5)
            .map(|i| {
                reg.admit(ip("10.0.0.1"), t + Duration::from_secs(i), 10, 10)
                    .unwrap()
            })
            .collect();
        let _new = reg.admit(ip("10.0.0.2"), t, 3, 10).unwrap();
        assert_eq!(reg.live(), 3);
        let evicted: Vec<bool> = slots
            .iter()
            .map(|s| reg.lock().conns[&s.id].evicted)
            .collect();
        assert_eq!(evicted, vec![true, true, true, false, false]);
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let reg = Arc::new(Registry::default());
        let t = Instant::now();
        let mapped = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001));
        assert_eq!(client_address(mapped), ip("10.0.0.1"));
        assert_eq!(client_address(ip("::1")), ip("::1"));
        let a = reg.admit(mapped, t, 10, 1).unwrap();
        let _busy = a.begin_request();
        assert_eq!(reg.from_address(ip("10.0.0.1")), 1);
        assert_eq!(
            reg.admit(ip("10.0.0.1"), t, 10, 1).unwrap_err(),
            Refused::PerAddress
        );
    }
}
