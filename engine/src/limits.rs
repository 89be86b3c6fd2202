//! Limits on what clients may hold open: API connections per client address and subscribers in
//! total, shared by every fanout core. A connection past a limit is answered with an XRPC error and
//! closed at once: `429 RateLimitExceeded` past `--max-connections-per-ip`, `503
//! NotEnoughResources` past `--max-subscribers`.
//!
//! IPv6 clients are counted per /64 (one site usually holds a whole /64); IPv4-mapped IPv6
//! addresses count as their IPv4 address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The key a client address is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    /// The upper 64 bits of the address.
    V6Prefix(u64),
}

impl ClientKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(u32::from(v4)),
                None => ClientKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// The limits and what is open now.
#[derive(Debug)]
pub struct ConnectionLimits {
    per_client: usize,
    max_subscribers: usize,
    open: Mutex<HashMap<ClientKey, usize>>,
    subscribers: AtomicUsize,
}

impl ConnectionLimits {
    /// At most `per_client` open API connections per client address (websockets included) and
    /// `max_subscribers` subscribers in all; 0 means no limit.
    pub fn new(per_client: usize, max_subscribers: usize) -> Arc<Self> {
        Arc::new(Self {
            per_client: if per_client == 0 { usize::MAX } else { per_client },
            max_subscribers: if max_subscribers == 0 { usize::MAX } else { max_subscribers },
            open: Mutex::new(HashMap::new()),
            subscribers: AtomicUsize::new(0),
        })
    }

    /// Counts a new connection from `ip`; `None` when that client already has its limit open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let key = ClientKey::of(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        if *n >= self.per_client {
            return None;
        }
        *n += 1;
        Some(ClientSlot { limits: Arc::clone(self), key })
    }

    /// Counts a new subscriber; `None` when the relay has its limit.
    pub fn admit_subscriber(self: &Arc<Self>) -> Option<SubscriberSlot> {
        let admitted = self
            .subscribers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_subscribers).then_some(n + 1))
            .is_ok();
        admitted.then(|| SubscriberSlot { limits: Arc::clone(self) })
    }

    /// Subscribers counted now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }
}

/// One open connection of a client; released on drop.
#[derive(Debug)]
pub struct ClientSlot {
    limits: Arc<ConnectionLimits>,
    key: ClientKey,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// One subscriber; released on drop.
#[derive(Debug)]
pub struct SubscriberSlot {
    limits: Arc<ConnectionLimits>,
}

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        self.limits.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_and_subscribers_are_bounded_and_released() {
        let limits = ConnectionLimits::new(2, 1);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let (s1, s2) = (limits.admit(a).unwrap(), limits.admit(a).unwrap());
        assert!(limits.admit(a).is_none());
        // The same client over IPv4-mapped IPv6, and another address of one IPv6 /64, share a count.
        assert!(limits.admit("::ffff:192.0.2.1".parse().unwrap()).is_none());
        let v6a = limits.admit("2001:db8::1".parse().unwrap()).unwrap();
        let _v6b = limits.admit("2001:db8::2".parse().unwrap()).unwrap();
        assert!(limits.admit("2001:db8::ffff:3".parse().unwrap()).is_none());
        assert!(limits.admit("2001:db8:0:1::1".parse().unwrap()).is_some(), "another /64");
        drop((s1, v6a));
        assert!(limits.admit(a).is_some());
        drop(s2);
        let sub = limits.admit_subscriber().unwrap();
        assert!(limits.admit_subscriber().is_none());
        assert_eq!(limits.subscribers(), 1);
        drop(sub);
        assert!(limits.admit_subscriber().is_some());
        let unlimited = ConnectionLimits::new(0, 0);
        let held: Vec<_> = (0..1000).map(|_| unlimited.admit(a).unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }
}
