//! Load balancing: smooth weighted round-robin over a service's servers,
//! sticky cookies, and the health state of each server (active checks mark
//! a server down; connect failures eject it for a while).
//!
//! Server state outlives configuration reloads: the same (service, URL)
//! keeps its [`ServerState`] so a reload does not forget a dead backend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{self, ServerUrl};

/// Largest round-robin schedule; weights are scaled down to fit.
const MAX_SCHEDULE: u64 = 1024;

/// Live state of one backend server.
#[derive(Debug)]
pub struct ServerState {
    /// URL as configured.
    pub url: String,
    /// Parsed address.
    pub addr: ServerUrl,
    /// Value of the sticky cookie that selects this server.
    pub cookie_id: String,
    /// Result of the last active health check (true until a check fails).
    healthy: AtomicBool,
    /// Passive ejection: not used before this instant (ms since `epoch`).
    down_until_ms: AtomicU64,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Connection or response errors.
    pub errors: AtomicU64,
    /// Last error seen, for the dashboard.
    last_error: Mutex<Option<String>>,
    epoch: Instant,
    /// Scheme and authority to connect to.
    pub target: http::Uri,
    /// Idle keep-alive connections to this server.
    pub pool: Arc<super::pool::Pool>,
}

impl ServerState {
    /// A fresh, healthy server.
    pub fn new(url: &str, addr: ServerUrl) -> ServerState {
        let target = http::Uri::builder()
            .scheme(if addr.tls { "https" } else { "http" })
            .authority(addr.authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        ServerState {
            target,
            pool: Arc::default(),
            url: url.to_string(),
            cookie_id: cookie_id(url),
            addr,
            healthy: AtomicBool::new(true),
            down_until_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether the last active check passed.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether passive ejection is in force.
    pub fn is_ejected(&self) -> bool {
        self.now_ms() < self.down_until_ms.load(Ordering::Relaxed)
    }

    /// Usable for new requests.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    /// Records an active check result; returns whether it changed.
    pub fn set_healthy(&self, ok: bool, why: Option<String>) -> bool {
        if let Some(w) = why {
            self.note_error(w);
        }
        self.healthy.swap(ok, Ordering::Relaxed) != ok
    }

    /// Takes the server out of rotation for `for_`, after a connect failure.
    pub fn eject(&self, for_: Duration, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.note_error(why);
        let until = self.now_ms() + for_.as_millis() as u64;
        self.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// Records an error without ejecting.
    pub fn note_error(&self, why: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(why);
        }
    }

    /// Ends a passive ejection (a request went through).
    pub fn clear_ejection(&self) {
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Status for the API.
    pub fn report(&self) -> ServerReport {
        ServerReport {
            url: self.url.clone(),
            status: if !self.is_healthy() {
                "down"
            } else if self.is_ejected() {
                "ejected"
            } else {
                "up"
            },
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

/// A server as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    /// URL.
    pub url: String,
    /// `up`, `down` (failed health check) or `ejected` (connect failures).
    pub status: &'static str,
    /// Requests sent.
    pub requests: u64,
    /// Errors seen.
    pub errors: u64,
    /// Last error, if any.
    pub last_error: Option<String>,
}

/// A short stable id for a server URL (the sticky cookie's value): FNV-1a.
fn cookie_id(url: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in url.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Keeps [`ServerState`] across reloads, keyed by (service, URL).
#[derive(Debug, Default)]
pub struct ServerRegistry {
    map: Mutex<HashMap<(String, String), Arc<ServerState>>>,
}

impl ServerRegistry {
    /// Runs `build` with a lookup that reuses existing states; states not
    /// looked up during `build` are forgotten.
    pub fn rebuild<T>(
        &self,
        build: impl FnOnce(&mut dyn FnMut(&str, &str, ServerUrl) -> Arc<ServerState>) -> T,
    ) -> T {
        let mut old = match self.map.lock() {
            Ok(mut m) => std::mem::take(&mut *m),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        let mut new = HashMap::new();
        let out = build(&mut |service, url, addr| {
            let key = (service.to_string(), url.to_string());
            let st = match old.remove(&key) {
                Some(s) if s.addr == addr => s,
                _ => Arc::new(ServerState::new(url, addr)),
            };
            new.insert(key, st.clone());
            st
        });
        match self.map.lock() {
            Ok(mut m) => *m = new,
            Err(p) => *p.into_inner() = new,
        }
        out
    }
}

/// Sticky cookie settings.
#[derive(Debug, Clone)]
pub struct StickyCookie {
    /// Cookie name.
    pub name: String,
    /// Attributes appended to Set-Cookie.
    pub attributes: String,
}

/// A load balancer over servers.
#[derive(Debug)]
pub struct Balancer {
    /// Servers.
    pub servers: Vec<Arc<ServerState>>,
    schedule: Vec<u16>,
    next: AtomicUsize,
    /// Forward the client's Host header.
    pub pass_host_header: bool,
    /// Sticky cookie, if configured.
    pub sticky: Option<StickyCookie>,
    /// Active health check, if configured.
    pub health_check: Option<config::HealthCheck>,
}

impl Balancer {
    /// Builds a balancer; `weights[i]` is the weight of `servers[i]`.
    pub fn new(servers: Vec<Arc<ServerState>>, weights: &[u32]) -> Balancer {
        Balancer {
            schedule: smooth_schedule(weights),
            servers,
            next: AtomicUsize::new(0),
            pass_host_header: true,
            sticky: None,
            health_check: None,
        }
    }

    /// Picks a server: the sticky one when `cookie` names an available
    /// server, else the next available one in weighted order, skipping
    /// `exclude` (servers already tried). When every server is ejected (but
    /// not failed by a health check) one is tried anyway rather than failing
    /// everything: ejection is a guess, a health check is a fact.
    pub fn pick(&self, cookie: Option<&str>, exclude: &[usize]) -> Option<usize> {
        if let Some(c) = cookie {
            if let Some(i) = self.servers.iter().position(|s| s.cookie_id == c) {
                if self.servers[i].is_available() && !exclude.contains(&i) {
                    return Some(i);
                }
            }
        }
        let n = self.schedule.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let i = self.schedule[(start + k) % n] as usize;
            if self.servers[i].is_available() && !exclude.contains(&i) {
                return Some(i);
            }
        }
        // Panic mode: all healthy servers are ejected.
        (0..self.servers.len())
            .map(|k| (start + k) % self.servers.len())
            .find(|&i| self.servers[i].is_healthy() && !exclude.contains(&i))
    }
}

/// Smooth weighted round-robin (nginx's): spreads heavy servers out instead
/// of sending them runs of requests. Weights are scaled to fit the schedule.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u16> {
    if weights.is_empty() {
        return Vec::new();
    }
    let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
    let w: Vec<i64> = weights
        .iter()
        .map(|&w| {
            let w = u64::from(w.max(1));
            if total > MAX_SCHEDULE {
                ((w * MAX_SCHEDULE) / total).max(1) as i64
            } else {
                w as i64
            }
        })
        .collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u16);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lb(n: usize, weights: &[u32]) -> Balancer {
        let servers = (0..n)
            .map(|i| {
                let url = format!("http://10.0.0.{i}:80");
                let addr = config::parse_server_url(&url).unwrap();
                Arc::new(ServerState::new(&url, addr))
            })
            .collect();
        Balancer::new(servers, weights)
    }

    #[test]
    fn weighted_round_robin_is_smooth_and_proportional() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        let b = lb(2, &[1, 3]);
        let mut count = [0; 2];
        for _ in 0..400 {
            count[b.pick(None, &[]).unwrap()] += 1;
        }
        assert_eq!(count, [100, 300]);
    }

    #[test]
    fn skips_ejected_and_down_servers_and_excluded_ones() {
        let b = lb(3, &[1, 1, 1]);
        b.servers[0].eject(Duration::from_secs(60), "refused".into());
        b.servers[1].set_healthy(false, None);
        for _ in 0..10 {
            assert_eq!(b.pick(None, &[]), Some(2));
        }
        // Only ejected (not failed) servers left: try one anyway.
        assert_eq!(b.pick(None, &[2]), Some(0));
        b.servers[0].set_healthy(false, None);
        assert_eq!(b.pick(None, &[2]), None);
        assert_eq!(b.servers[1].report().status, "down");
    }

    #[test]
    fn sticky_cookie_selects_its_server() {
        let b = lb(3, &[1, 1, 1]);
        let id = b.servers[2].cookie_id.clone();
        for _ in 0..5 {
            assert_eq!(b.pick(Some(&id), &[]), Some(2));
        }
        b.servers[2].eject(Duration::from_secs(60), "x".into());
        assert_ne!(b.pick(Some(&id), &[]), Some(2));
        assert_eq!(b.pick(Some("unknown"), &[]).map(|i| i < 2), Some(true));
    }

    #[test]
    fn registry_keeps_state_across_rebuilds() {
        let reg = ServerRegistry::default();
        let url = "http://10.0.0.1:80";
        let addr = config::parse_server_url(url).unwrap();
        let a = reg.rebuild(|get| get("svc", url, addr.clone()));
        a.set_healthy(false, None);
        let b = reg.rebuild(|get| get("svc", url, addr.clone()));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!b.is_healthy());
        reg.rebuild(|_| ());
        let c = reg.rebuild(|get| get("svc", url, addr.clone()));
        assert!(c.is_healthy(), "a removed server starts fresh");
    }

    proptest! {
        #[test]
        fn schedule_respects_weights(weights in proptest::collection::vec(1u32..20, 1..8)) {
            let s = smooth_schedule(&weights);
            for (i, &w) in weights.iter().enumerate() {
                prop_assert_eq!(s.iter().filter(|&&x| x as usize == i).count(), w as usize);
            }
        }

        #[test]
        fn schedule_is_bounded(weights in proptest::collection::vec(1u32..100_000, 1..50)) {
            let s = smooth_schedule(&weights);
            prop_assert!(s.len() as u64 <= MAX_SCHEDULE + 50);
            for i in 0..weights.len() {
                prop_assert!(s.contains(&(i as u16)));
            }
        }
    }
}
