//! The agent's configuration, resolved from flags, `VIP_*` variables (both
//! handled by clap in [`crate::cli`]), the osixia/keepalived variables
//! (`KEEPALIVED_*`) and defaults, in that order of precedence.
//!
//! List values (virtual IPs, peers) are read in every form the osixia image
//! accepts: `#PYTHON2BASH:['a', 'b']`, space-separated `a b`, and also
//! comma-separated `a,b`. A virtual IP entry is `ADDR[/PREFIX] [dev IF]
//! [label LABEL]`, as in keepalived's `virtual_ipaddress` block.
//!
//! Every mistake is a [`ConfigError`] naming the value, where it came from
//! and how to fix it; the binary exits 2 with it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// A configuration mistake. The message names the value and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Default VRRP interface (osixia's default too).
pub const DEFAULT_INTERFACE: &str = "eth0";
/// Default virtual router id (osixia's `KEEPALIVED_ROUTER_ID` default).
pub const DEFAULT_VRID: u8 = 51;
/// Default priority (keepalived's default).
pub const DEFAULT_PRIORITY: u8 = 100;
/// Default advertisement interval in centiseconds: fast, so that a dead
/// master is replaced in 3 × 0.1 s + skew < 0.4 s (keepalived: 100 cs).
pub const DEFAULT_ADVERT_INT: u16 = 10;
/// The opt-in edge check: an HTTPS request to the local edge. Any HTTP
/// status counts (edge answers 404 for an unknown host), so the check
/// proves that edge accepts connections, completes TLS and answers — a TCP
/// connect alone would pass with a wedged proxy.
pub const EDGE_CHECK: &str = "https://127.0.0.1:443/,status=any";

/// One virtual address, as keepalived's `virtual_ipaddress` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualIp {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length it is added with (default 32, as keepalived).
    pub prefix: u8,
    /// Interface to add it on, when not the VRRP interface.
    pub dev: Option<String>,
    /// Address label (`eth0:vip`), at most 15 bytes.
    pub label: Option<String>,
}

impl std::fmt::Display for VirtualIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)?;
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        if let Some(l) = &self.label {
            write!(f, " label {l}")?;
        }
        Ok(())
    }
}

/// What a health check probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connection opens.
    Tcp(SocketAddr),
    /// An HTTP GET answers with the expected status (`None`: any status).
    Http {
        /// Where to connect.
        addr: SocketAddr,
        /// Whether to speak TLS (certificates are not verified: the check is
        /// about liveness of the local service, which often has a
        /// self-signed certificate).
        tls: bool,
        /// Host header.
        host: String,
        /// Request path.
        path: String,
        /// Expected status.
        expect: Option<u16>,
    },
    /// A command exits 0.
    Command(Vec<String>),
}

/// A health check and how its results count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    /// The text it was parsed from (shown in status).
    pub name: String,
    /// What is probed.
    pub probe: Probe,
    /// Time between probes.
    pub interval: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Failures in a row before the check is down.
    pub fall: u32,
    /// Successes in a row before the check is up again.
    pub rise: u32,
    /// keepalived's semantics: > 0 is added while up, < 0 is added while
    /// down, 0 puts the node in FAULT while down.
    pub weight: i32,
}

/// The resolved configuration of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// VRRP interface.
    pub interface: String,
    /// Virtual router id.
    pub vrid: u8,
    /// Base priority (255 = address owner).
    pub priority: u8,
    /// Advertisement interval, centiseconds.
    pub advert_int: u16,
    /// Virtual addresses; empty means the agent only serves its admin port.
    pub virtual_ips: Vec<VirtualIp>,
    /// Unicast peers; empty means multicast to 224.0.0.18.
    pub peers: Vec<Ipv4Addr>,
    /// Initial state hint MASTER (keepalived's `state MASTER`).
    pub start_as_master: bool,
    /// Preemption (on unless `--nopreempt`).
    pub preempt: bool,
    /// Delay before preempting after start-up.
    pub preempt_delay: Duration,
    /// Health checks.
    pub checks: Vec<CheckSpec>,
    /// Notify command (program and arguments).
    pub notify: Option<Vec<String>>,
    /// Gratuitous ARPs sent on becoming master.
    pub garp_repeat: u32,
    /// Period of the gratuitous ARP refresh while master (`None`: off).
    pub garp_refresh: Option<Duration>,
    /// Things worth a warning in the log (ignored variables).
    pub warnings: Vec<String>,
}

/// Raw values from the command line / `VIP_*` (already parsed by clap
/// where a type fits), before the `KEEPALIVED_*` fallbacks.
#[derive(Debug, Clone, Default)]
pub struct Raw {
    pub interface: Option<String>,
    pub vrid: Option<u8>,
    pub priority: Option<u8>,
    pub advert_int: u16,
    pub virtual_ips: Vec<String>,
    pub peers: Vec<String>,
    pub state: Option<String>,
    pub nopreempt: bool,
    pub preempt_delay: Option<String>,
    pub checks: Vec<String>,
    pub check_edge: bool,
    pub notify: Option<String>,
    pub garp_repeat: u32,
    pub garp_refresh: String,
}

impl Config {
    /// Resolves `raw` with `env` (the process environment in the binary)
    /// supplying the `KEEPALIVED_*` fallbacks.
    pub fn resolve(raw: Raw, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let kv = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let mut warnings = Vec::new();

        let interface = match raw.interface.or_else(|| kv("KEEPALIVED_INTERFACE")) {
            Some(i) => i.trim().to_string(),
            None => DEFAULT_INTERFACE.to_string(),
        };
        check_ifname(&interface, "--interface / KEEPALIVED_INTERFACE")?;

        let vrid = match raw.vrid {
            Some(v) => v,
            None => match kv("KEEPALIVED_ROUTER_ID") {
                Some(v) => parse_range(&v, 1, 255, "KEEPALIVED_ROUTER_ID", "a virtual router id")?,
                None => DEFAULT_VRID,
            },
        };
        if vrid == 0 {
            return err("--vrid 0: virtual router ids are 1-255 — pick one shared by every node of the group");
        }
        let priority = match raw.priority {
            Some(p) => p,
            None => match kv("KEEPALIVED_PRIORITY") {
                Some(v) => parse_range(&v, 1, 255, "KEEPALIVED_PRIORITY", "a priority")?,
                None => DEFAULT_PRIORITY,
            },
        };
        if priority == 0 {
            return err("--priority 0: priorities are 1-254 (255 only on the address owner) — 0 is reserved for a leaving master");
        }
        if raw.advert_int == 0 || raw.advert_int > crate::packet::MAX_ADVER_INT {
            return err(format!(
                "--advert-int {}: the advertisement interval is 1-4095 centiseconds (10 = 0.1 s, 100 = keepalived's advert_int 1)",
                raw.advert_int
            ));
        }

        let (vip_text, vip_src) = if !raw.virtual_ips.is_empty() {
            (raw.virtual_ips.join(","), "--virtual-ip / VIP_VIRTUAL_IPS")
        } else {
            (
                kv("KEEPALIVED_VIRTUAL_IPS").unwrap_or_default(),
                "KEEPALIVED_VIRTUAL_IPS",
            )
        };
        let virtual_ips = parse_virtual_ips(&vip_text, vip_src)?;

        let (peer_text, peer_src) = if !raw.peers.is_empty() {
            (raw.peers.join(","), "--peer / VIP_PEERS")
        } else {
            (
                kv("KEEPALIVED_UNICAST_PEERS").unwrap_or_default(),
                "KEEPALIVED_UNICAST_PEERS",
            )
        };
        let peers = parse_peers(&peer_text, peer_src)?;

        let start_as_master = match raw.state.or_else(|| kv("KEEPALIVED_STATE")) {
            None => false,
            Some(s) => match s.trim().to_ascii_uppercase().as_str() {
                "MASTER" => true,
                "BACKUP" => false,
                _ => {
                    return err(format!(
                        "state {s:?} (--state / KEEPALIVED_STATE): use MASTER or BACKUP"
                    ))
                }
            },
        };
        let preempt_delay = match raw.preempt_delay {
            Some(d) => parse_duration(&d, "--preempt-delay")?,
            None => Duration::ZERO,
        };

        let mut check_texts = raw.checks.clone();
        if raw.check_edge {
            check_texts.push(EDGE_CHECK.to_string());
        }
        let checks = check_texts
            .iter()
            .map(|c| parse_check(c))
            .collect::<Result<Vec<_>, _>>()?;

        let notify = match raw.notify.or_else(|| kv("KEEPALIVED_NOTIFY")) {
            Some(n) if !n.trim().is_empty() => {
                Some(n.split_whitespace().map(str::to_string).collect())
            }
            _ => None,
        };
        let garp_refresh = parse_duration(&raw.garp_refresh, "--garp-refresh")?;
        let garp_refresh = (!garp_refresh.is_zero()).then_some(garp_refresh);
        if raw.garp_repeat > 100 {
            return err(format!(
                "--garp-repeat {}: at most 100 gratuitous ARPs per take-over (keepalived sends 5)",
                raw.garp_repeat
            ));
        }
        if kv("KEEPALIVED_PASSWORD").is_some() {
            warnings.push(
                "KEEPALIVED_PASSWORD is ignored: VRRPv3 has no authentication (RFC 5798 §9)"
                    .to_string(),
            );
        }
        let preempt = !raw.nopreempt;

        Ok(Config {
            interface,
            vrid,
            priority,
            advert_int: raw.advert_int,
            virtual_ips,
            peers,
            start_as_master,
            preempt,
            preempt_delay,
            checks,
            notify,
            garp_repeat: raw.garp_repeat,
            garp_refresh,
            warnings,
        })
    }
}

fn parse_range(v: &str, lo: u8, hi: u8, src: &str, what: &str) -> Result<u8, ConfigError> {
    match v.trim().parse::<u16>() {
        Ok(n) if (u16::from(lo)..=u16::from(hi)).contains(&n) => Ok(n as u8),
        _ => err(format!(
            "{src}={v:?} is not {what}: use a number from {lo} to {hi}"
        )),
    }
}

fn check_ifname(name: &str, src: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 15
        || name.contains(|c: char| c.is_whitespace() || c == '/' || c == ':')
    {
        return err(format!(
            "interface name {name:?} ({src}) is not valid: use a name such as eth0 (1-15 characters, no '/', ':' or spaces)"
        ));
    }
    Ok(())
}

/// Parses a duration: a plain number is seconds (as keepalived), or a
/// humantime value such as `500ms`, `2s`, `1m`.
pub fn parse_duration(v: &str, src: &str) -> Result<Duration, ConfigError> {
    let t = v.trim();
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() && (0.0..=86_400.0).contains(&secs) {
            return Ok(Duration::from_secs_f64(secs));
        }
    } else if let Ok(d) = humantime::parse_duration(t) {
        if d <= Duration::from_secs(86_400) {
            return Ok(d);
        }
    }
    err(format!(
        "{src} {v:?} is not a duration: use seconds (5, 0.5) or a unit (500ms, 2s), at most a day"
    ))
}

/// Splits a list value in any of its forms into whitespace-separated
/// tokens: `#PYTHON2BASH:['a b', 'c']`, `a b c`, `a,b,c`.
pub fn list_tokens(v: &str) -> Vec<String> {
    let mut t = v.trim();
    if let Some(rest) = t.strip_prefix("#PYTHON2BASH:") {
        t = rest.trim();
    }
    t = t.strip_prefix('[').unwrap_or(t);
    t = t.strip_suffix(']').unwrap_or(t);
    t.split(|c: char| c == ',' || c.is_whitespace())
        .map(|s| s.trim_matches(|c| c == '\'' || c == '"').trim())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses virtual IP entries (`ADDR[/PREFIX] [dev IF] [label L]`...).
pub fn parse_virtual_ips(v: &str, src: &str) -> Result<Vec<VirtualIp>, ConfigError> {
    let tokens = list_tokens(v);
    let mut out: Vec<VirtualIp> = Vec::new();
    let mut it = tokens.iter();
    while let Some(tok) = it.next() {
        match tok.as_str() {
            "dev" | "label" => {
                let Some(value) = it.next() else {
                    return err(format!("{src}: `{tok}` needs a value, as in `10.0.0.100/24 dev eth0 label eth0:vip`"));
                };
                let Some(last) = out.last_mut() else {
                    return err(format!("{src}: `{tok} {value}` comes before any address — write it after the address it belongs to"));
                };
                if tok == "dev" {
                    check_ifname(value, src)?;
                    last.dev = Some(value.clone());
                } else {
                    if value.len() > 15 {
                        return err(format!("{src}: label {value:?} is longer than 15 bytes — use a shorter one such as eth0:vip"));
                    }
                    last.label = Some(value.clone());
                }
            }
            _ => {
                let (addr, prefix) = match tok.split_once('/') {
                    Some((a, p)) => (a, Some(p)),
                    None => (tok.as_str(), None),
                };
                let Ok(addr) = addr.parse::<Ipv4Addr>() else {
                    return err(format!(
                        "{src}: {tok:?} is not an IPv4 address — write entries as ADDR[/PREFIX] [dev IF] [label LABEL], e.g. 10.0.0.100/24"
                    ));
                };
                let prefix = match prefix {
                    None => 32,
                    Some(p) => match p.parse::<u8>() {
                        Ok(n) if (1..=32).contains(&n) => n,
                        _ => return err(format!("{src}: prefix length in {tok:?} must be 1-32")),
                    },
                };
                if addr.is_unspecified()
                    || addr.is_multicast()
                    || addr.is_broadcast()
                    || addr.is_loopback()
                {
                    return err(format!(
                        "{src}: {addr} cannot be a virtual IP — use a unicast address of the node's subnet"
                    ));
                }
                if out.iter().any(|x| x.addr == addr) {
                    return err(format!(
                        "{src}: {addr} is listed twice — list each virtual IP once"
                    ));
                }
                out.push(VirtualIp {
                    addr,
                    prefix,
                    dev: None,
                    label: None,
                });
            }
        }
    }
    if out.len() > crate::packet::MAX_ADDRESSES {
        return err(format!(
            "{src}: {} virtual IPs; one VRRP instance carries at most 255",
            out.len()
        ));
    }
    Ok(out)
}

/// Parses unicast peers.
pub fn parse_peers(v: &str, src: &str) -> Result<Vec<Ipv4Addr>, ConfigError> {
    let mut out = Vec::new();
    for tok in list_tokens(v) {
        let Ok(addr) = tok.parse::<Ipv4Addr>() else {
            return err(format!(
                "{src}: peer {tok:?} is not an IPv4 address — list the other nodes' addresses, e.g. \"#PYTHON2BASH:['10.0.0.2', '10.0.0.3']\" or \"10.0.0.2 10.0.0.3\""
            ));
        };
        if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
            return err(format!("{src}: peer {addr} is not a unicast address"));
        }
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// Parses a check: `tcp:HOST:PORT`, `http://HOST:PORT/PATH`,
/// `https://HOST:PORT/PATH` or `cmd:PROGRAM ARGS`, then `,key=value`
/// options: `interval`, `timeout`, `fall`, `rise`, `weight`, `status`.
pub fn parse_check(text: &str) -> Result<CheckSpec, ConfigError> {
    let mut parts = text.split(',');
    let target = parts.next().unwrap_or_default().trim();
    let bad = |what: String| -> ConfigError {
        ConfigError(format!(
            "check {text:?}: {what} — write tcp:127.0.0.1:443, http://127.0.0.1:8080/health, https://127.0.0.1/ or cmd:/path/to/script, then options such as ,weight=-20,fall=2,rise=2,interval=1s,timeout=1s,status=200"
        ))
    };
    let mut expect = Some(200);
    let mut spec = CheckSpec {
        name: text.trim().to_string(),
        probe: Probe::Command(Vec::new()),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        fall: 2,
        rise: 2,
        weight: 0,
    };
    for opt in parts {
        let opt = opt.trim();
        if opt.is_empty() {
            continue;
        }
        let Some((k, v)) = opt.split_once('=') else {
            return Err(bad(format!("option {opt:?} is not key=value")));
        };
        let v = v.trim();
        match k.trim() {
            "interval" => {
                spec.interval = parse_duration(v, "check interval")?;
                if spec.interval < Duration::from_millis(10) {
                    return Err(bad("interval below 10ms".into()));
                }
            }
            "timeout" => {
                spec.timeout = parse_duration(v, "check timeout")?;
                if spec.timeout.is_zero() {
                    return Err(bad("timeout of zero".into()));
                }
            }
            "fall" => {
                spec.fall = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| bad(format!("fall={v} (use 1-1000)")))?
            }
            "rise" => {
                spec.rise = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| bad(format!("rise={v} (use 1-1000)")))?
            }
            "weight" => {
                spec.weight = v
                    .parse()
                    .ok()
                    .filter(|n: &i32| (-254..=254).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "weight={v} (use -254..254; 0 = FAULT while failing)"
                        ))
                    })?
            }
            "status" => {
                expect = if v == "any" {
                    None
                } else {
                    Some(
                        v.parse()
                            .ok()
                            .filter(|n| (100..=599).contains(n))
                            .ok_or_else(|| bad(format!("status={v} (use 100-599 or any)")))?,
                    )
                }
            }
            other => return Err(bad(format!("unknown option {other:?}"))),
        }
    }
    spec.probe = if let Some(rest) = target.strip_prefix("tcp:") {
        Probe::Tcp(
            parse_socket_addr(rest, None).ok_or_else(|| bad(format!("{rest:?} is not IP:PORT")))?,
        )
    } else if let Some((tls, rest)) = target
        .strip_prefix("http://")
        .map(|r| (false, r))
        .or_else(|| target.strip_prefix("https://").map(|r| (true, r)))
    {
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = parse_socket_addr(hostport, Some(if tls { 443 } else { 80 }))
            .ok_or_else(|| bad(format!("{hostport:?} is not IP[:PORT]")))?;
        if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(bad(format!(
                "path {path:?} has spaces or control characters"
            )));
        }
        Probe::Http {
            addr,
            tls,
            host: hostport.to_string(),
            path: path.to_string(),
            expect,
        }
    } else if let Some(rest) = target.strip_prefix("cmd:") {
        let argv: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
        if argv.is_empty() {
            return Err(bad("empty command".into()));
        }
        Probe::Command(argv)
    } else {
        return Err(bad(format!("unknown kind {target:?}")));
    };
    if spec.timeout > spec.interval.max(Duration::from_secs(1)) * 10 {
        return Err(bad("timeout more than 10 intervals".into()));
    }
    Ok(spec)
}

fn parse_socket_addr(s: &str, default_port: Option<u16>) -> Option<SocketAddr> {
    let s = s.trim();
    let s = s.replacen("localhost", "127.0.0.1", 1);
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip: std::net::IpAddr = s.trim_matches(|c| c == '[' || c == ']').parse().ok()?;
    Some(SocketAddr::new(ip, default_port?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn raw() -> Raw {
        Raw {
            advert_int: DEFAULT_ADVERT_INT,
            garp_repeat: 5,
            garp_refresh: "60s".into(),
            ..Raw::default()
        }
    }

    fn resolve(raw: Raw, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::resolve(raw, &move |k| env.get(k).cloned())
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_need_nothing() {
        let c = resolve(raw(), &[]).unwrap();
        assert_eq!(c.interface, "eth0");
        assert_eq!((c.vrid, c.priority, c.advert_int), (51, 100, 10));
        assert!(c.virtual_ips.is_empty() && c.peers.is_empty() && c.checks.is_empty());
        assert!(c.preempt && !c.start_as_master);
        assert_eq!(c.garp_refresh, Some(Duration::from_secs(60)));
    }

    #[test]
    fn reads_the_osixia_variables_in_both_list_forms() {
        let c = resolve(
            raw(),
            &[
                ("KEEPALIVED_INTERFACE", "ens3"),
                ("KEEPALIVED_ROUTER_ID", "52"),
                ("KEEPALIVED_PRIORITY", "150"),
                ("KEEPALIVED_STATE", "MASTER"),
                (
                    "KEEPALIVED_UNICAST_PEERS",
                    "#PYTHON2BASH:['192.168.1.10', '192.168.1.11']",
                ),
                (
                    "KEEPALIVED_VIRTUAL_IPS",
                    "#PYTHON2BASH:['192.168.1.231/24 dev eth1 label eth1:vip', '192.168.1.232']",
                ),
                ("KEEPALIVED_PASSWORD", "d0cker"),
            ],
        )
        .unwrap();
        assert_eq!(c.interface, "ens3");
        assert_eq!((c.vrid, c.priority), (52, 150));
        assert!(c.start_as_master);
        assert_eq!(c.peers, vec![ip("192.168.1.10"), ip("192.168.1.11")]);
        assert_eq!(
            c.virtual_ips,
            vec![
                VirtualIp {
                    addr: ip("192.168.1.231"),
                    prefix: 24,
                    dev: Some("eth1".into()),
                    label: Some("eth1:vip".into())
                },
                VirtualIp {
                    addr: ip("192.168.1.232"),
                    prefix: 32,
                    dev: None,
                    label: None
                },
            ]
        );
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);

        let c = resolve(
            raw(),
            &[
                ("KEEPALIVED_UNICAST_PEERS", "10.0.0.2 10.0.0.3"),
                (
                    "KEEPALIVED_VIRTUAL_IPS",
                    "10.0.0.100 10.0.0.101/24 dev eth0",
                ),
                ("KEEPALIVED_STATE", "backup"),
            ],
        )
        .unwrap();
        assert_eq!(c.peers, vec![ip("10.0.0.2"), ip("10.0.0.3")]);
        assert_eq!(c.virtual_ips.len(), 2);
        assert_eq!(c.virtual_ips[1].dev.as_deref(), Some("eth0"));
        assert!(!c.start_as_master);
    }

    #[test]
    fn flags_beat_keepalived_variables() {
        let r = Raw {
            interface: Some("lan0".into()),
            priority: Some(200),
            vrid: Some(7),
            virtual_ips: vec!["10.1.0.1".into()],
            peers: vec!["10.1.0.2,10.1.0.3".into()],
            nopreempt: true,
            ..raw()
        };
        let c = resolve(
            r,
            &[
                ("KEEPALIVED_INTERFACE", "ens3"),
                ("KEEPALIVED_PRIORITY", "150"),
                ("KEEPALIVED_ROUTER_ID", "52"),
                ("KEEPALIVED_VIRTUAL_IPS", "10.9.9.9"),
                ("KEEPALIVED_UNICAST_PEERS", "10.9.9.8"),
            ],
        )
        .unwrap();
        assert_eq!((c.interface.as_str(), c.priority, c.vrid), ("lan0", 200, 7));
        assert_eq!(c.virtual_ips[0].addr, ip("10.1.0.1"));
        assert_eq!(c.peers, vec![ip("10.1.0.2"), ip("10.1.0.3")]);
        assert!(!c.preempt);
    }

    #[test]
    fn mistakes_name_the_value_and_the_fix() {
        type Case<'a> = (Raw, Vec<(&'a str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            (raw(), vec![("KEEPALIVED_PRIORITY", "high")], "\"high\""),
            (raw(), vec![("KEEPALIVED_PRIORITY", "300")], "1 to 255"),
            (
                raw(),
                vec![("KEEPALIVED_ROUTER_ID", "0")],
                "KEEPALIVED_ROUTER_ID",
            ),
            (
                raw(),
                vec![("KEEPALIVED_STATE", "LEADER")],
                "MASTER or BACKUP",
            ),
            (
                raw(),
                vec![("KEEPALIVED_VIRTUAL_IPS", "10.0.0.300")],
                "10.0.0.300",
            ),
            (
                raw(),
                vec![("KEEPALIVED_VIRTUAL_IPS", "10.0.0.1/40")],
                "1-32",
            ),
            (
                raw(),
                vec![("KEEPALIVED_VIRTUAL_IPS", "dev eth0")],
                "before any address",
            ),
            (
                raw(),
                vec![("KEEPALIVED_VIRTUAL_IPS", "10.0.0.1 10.0.0.1")],
                "twice",
            ),
            (
                raw(),
                vec![("KEEPALIVED_VIRTUAL_IPS", "224.0.0.18")],
                "cannot be a virtual IP",
            ),
            (
                raw(),
                vec![("KEEPALIVED_UNICAST_PEERS", "node-2")],
                "\"node-2\"",
            ),
            (
                raw(),
                vec![("KEEPALIVED_INTERFACE", "eth0 eth1")],
                "eth0 eth1",
            ),
            (
                Raw {
                    advert_int: 0,
                    ..raw()
                },
                vec![],
                "1-4095",
            ),
            (
                Raw {
                    advert_int: 5000,
                    ..raw()
                },
                vec![],
                "--advert-int 5000",
            ),
            (
                Raw {
                    preempt_delay: Some("soon".into()),
                    ..raw()
                },
                vec![],
                "\"soon\"",
            ),
            (
                Raw {
                    checks: vec!["ping:1.2.3.4".into()],
                    ..raw()
                },
                vec![],
                "ping:1.2.3.4",
            ),
            (
                Raw {
                    checks: vec!["tcp:127.0.0.1".into()],
                    ..raw()
                },
                vec![],
                "IP:PORT",
            ),
            (
                Raw {
                    checks: vec!["tcp:127.0.0.1:80,weight=500".into()],
                    ..raw()
                },
                vec![],
                "weight=500",
            ),
            (
                Raw {
                    checks: vec!["tcp:127.0.0.1:80,speed=1".into()],
                    ..raw()
                },
                vec![],
                "speed",
            ),
        ];
        for (r, env, needle) in cases {
            let e = resolve(r, &env).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
    }

    #[test]
    fn parses_checks() {
        let c = parse_check("tcp:127.0.0.1:443").unwrap();
        assert_eq!(c.probe, Probe::Tcp("127.0.0.1:443".parse().unwrap()));
        assert_eq!((c.fall, c.rise, c.weight), (2, 2, 0));
        let c = parse_check("http://127.0.0.1:8080/health,status=204,weight=-30,fall=3,rise=1,interval=200ms,timeout=100ms").unwrap();
        assert_eq!(
            c.probe,
            Probe::Http {
                addr: "127.0.0.1:8080".parse().unwrap(),
                tls: false,
                host: "127.0.0.1:8080".into(),
                path: "/health".into(),
                expect: Some(204)
            }
        );
        assert_eq!((c.fall, c.rise, c.weight), (3, 1, -30));
        assert_eq!(c.interval, Duration::from_millis(200));
        let c = parse_check("https://localhost,status=any").unwrap();
        assert!(
            matches!(c.probe, Probe::Http { tls: true, expect: None, addr, .. } if addr.port() == 443)
        );
        let c = parse_check("cmd:/bin/test -f /tmp/ok,weight=10").unwrap();
        assert_eq!(
            c.probe,
            Probe::Command(vec!["/bin/test".into(), "-f".into(), "/tmp/ok".into()])
        );
        let with_edge = resolve(
            Raw {
                check_edge: true,
                ..raw()
            },
            &[],
        )
        .unwrap();
        assert!(
            matches!(&with_edge.checks[0].probe, Probe::Http { tls: true, expect: None, addr, .. } if *addr == "127.0.0.1:443".parse().unwrap()),
            "{:?}",
            with_edge.checks[0].probe
        );
    }

    #[test]
    fn list_forms() {
        for v in [
            "#PYTHON2BASH:['a', 'b']",
            "#PYTHON2BASH:[\"a\",\"b\"]",
            "a b",
            "  a,b ",
            "['a','b']",
        ] {
            assert_eq!(list_tokens(v), vec!["a", "b"], "{v}");
        }
        assert!(list_tokens("#PYTHON2BASH:[]").is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5", "x").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_duration("0.5", "x").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration("250ms", "x").unwrap(),
            Duration::from_millis(250)
        );
        assert!(parse_duration("-1", "x").is_err());
        assert!(parse_duration("NaN", "x").is_err());
        assert!(parse_duration("1000d", "x").is_err());
    }
}
