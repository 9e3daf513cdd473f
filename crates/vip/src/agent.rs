//! The running agent: one task that owns the state machine and carries out
//! its actions on the network, fed by the VRRP socket, its own timer, the
//! health checks and the link state. Everything it learns goes to the
//! shared status and the metrics.
//!
//! On start it removes virtual addresses left over from a crash; on a clean
//! stop it sends a priority-0 advert (if master) and removes them again.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use b3_common::Shutdown;
use tokio::sync::watch;

use crate::admin::{label, Metrics, SharedStatus, Transition, RECENT_TRANSITIONS};
use crate::config::{Config, VirtualIp};
use crate::fsm::{Action, Event, Machine, Params, State};
use crate::health::{self, CheckStatus};
use crate::net::{self, Arp, Interface, LinkEvents, Netlink, VrrpSocket};
use crate::packet::{self, Advert, DropReason};

/// Time between gratuitous ARPs of one burst.
pub const GARP_SPACING: Duration = Duration::from_millis(100);
/// How often the link state is polled besides the netlink notifications
/// (a safety net; notifications report a change at once).
pub const LINK_POLL: Duration = Duration::from_secs(5);
/// Longest a notify command may run before it is killed.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// A failure to start that the operator must fix in the configuration
/// (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

/// Everything the running agent owns.
struct Agent {
    cfg: Config,
    /// Unicast to `cfg.peers` (which may be empty if only this node was
    /// listed) instead of multicast.
    unicast: bool,
    iface: Interface,
    primary: Ipv4Addr,
    /// Each virtual IP with the interface it lives on.
    vips: Vec<(VirtualIp, Interface)>,
    sock: VrrpSocket,
    netlink: Netlink,
    link_events: LinkEvents,
    arp: Arp,
    metrics: Metrics,
    status: SharedStatus,
    start: Instant,
    holding: bool,
    garp_left: u32,
    next_garp: Option<Instant>,
    next_refresh: Option<Instant>,
}

/// Opens everything, then runs VRRP until `shutdown` fires.
pub async fn run(
    mut cfg: Config,
    metrics: Metrics,
    status: SharedStatus,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let iface = Interface::lookup(&cfg.interface).map_err(|e| {
        SetupError(format!(
            "interface {:?}: {e} — set --interface or KEEPALIVED_INTERFACE to the interface that carries the virtual IP",
            cfg.interface
        ))
    })?;
    let vip_addrs: Vec<Ipv4Addr> = cfg.virtual_ips.iter().map(|v| v.addr).collect();
    let primary = net::ipv4_addresses(&iface.name)
        .with_context(|| format!("listing the addresses of {}", iface.name))?
        .into_iter()
        .find(|a| !vip_addrs.contains(a))
        .ok_or_else(|| {
            SetupError(format!(
                "interface {} has no IPv4 address besides the virtual IPs: VRRP needs one to send from — give it an address, or pick the right --interface",
                iface.name
            ))
        })?;
    // osixia's examples give every node the same peer list, own address
    // included: unicast to ourselves would only be dropped again.
    let unicast = !cfg.peers.is_empty();
    let own = net::ipv4_addresses(&iface.name).unwrap_or_default();
    cfg.peers
        .retain(|p| !own.contains(p) || vip_addrs.contains(p));
    let mut vips = Vec::new();
    for v in &cfg.virtual_ips {
        let dev = match &v.dev {
            Some(d) if *d != iface.name => Interface::lookup(d).map_err(|e| {
                SetupError(format!(
                    "virtual IP {v}: interface {d:?}: {e} — fix its `dev`"
                ))
            })?,
            _ => iface.clone(),
        };
        vips.push((v.clone(), dev));
    }
    let perm = |what: &str, e: std::io::Error| -> anyhow::Error {
        anyhow::anyhow!(
            "{what}: {e} (vip needs CAP_NET_RAW and CAP_NET_ADMIN: run as root or with `--cap-add NET_ADMIN --cap-add NET_RAW --network host`)"
        )
    };
    let sock = VrrpSocket::open(&iface, primary, unicast)
        .map_err(|e| perm("opening the VRRP raw socket", e))?;
    let netlink = Netlink::open().map_err(|e| perm("opening rtnetlink", e))?;
    let link_events = LinkEvents::open().map_err(|e| perm("subscribing to link events", e))?;
    let arp = Arp::open().map_err(|e| perm("opening the ARP socket", e))?;

    let mut agent = Agent {
        cfg,
        unicast,
        iface,
        primary,
        vips,
        sock,
        netlink,
        link_events,
        arp,
        metrics,
        status,
        start: Instant::now(),
        holding: false,
        garp_left: 0,
        next_garp: None,
        next_refresh: None,
    };
    // Left-overs of a crash: this node is not master yet.
    agent.remove_addresses();
    {
        let mut st = agent.lock_status();
        st.vrrp_enabled = true;
        st.primary = Some(primary.to_string());
        st.virtual_ips = agent.vips.iter().map(|(v, _)| v.to_string()).collect();
        st.mode = if agent.unicast {
            "unicast"
        } else {
            "multicast"
        };
        st.peers = agent.cfg.peers.iter().map(|p| p.to_string()).collect();
        st.preempt = agent.cfg.preempt;
    }
    tracing::info!(
        interface = %agent.iface.name,
        primary = %primary,
        vrid = agent.cfg.vrid,
        priority = agent.cfg.priority,
        advert_int_cs = agent.cfg.advert_int,
        vips = ?agent.cfg.virtual_ips.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        peers = ?agent.cfg.peers,
        "VRRP starting"
    );
    let checks = health::spawn(agent.cfg.checks.clone(), shutdown.clone());
    let result = agent.run_loop(checks, shutdown).await;
    agent.remove_addresses();
    result
}

impl Agent {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, crate::admin::Status> {
        match self.status.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    async fn run_loop(
        &mut self,
        mut checks: watch::Receiver<Vec<CheckStatus>>,
        mut shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        let params = Params {
            primary: self.primary,
            advert_int: self.cfg.advert_int,
            preempt: self.cfg.preempt,
            preempt_delay: self.cfg.preempt_delay,
            start_as_master: self.cfg.start_as_master,
        };
        let results = checks.borrow_and_update().clone();
        let (priority, check_fault) = health::effective(self.cfg.priority, &results);
        let mut link = net::link_up(&self.iface.name);
        let mut faulted = check_fault || !link;
        let mut m = Machine::new(params, priority);
        if faulted {
            m.handle(Event::Fault, self.now());
        }
        let actions = m.handle(Event::Startup, self.now());
        self.execute(&m, actions);
        self.publish(&m, &results, link);

        let mut buf = vec![0u8; 65_536];
        let mut link_poll = tokio::time::interval(LINK_POLL);
        link_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        let mut recv_errors = 0u32;
        let mut checks_open = true;
        loop {
            let timer = m
                .deadline()
                .map(|d| tokio::time::Instant::from_std(self.start + d))
                .unwrap_or_else(far);
            let garp_at = [self.next_garp, self.next_refresh]
                .into_iter()
                .flatten()
                .min()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(far);
            tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep_until(timer) => {
                    let a = m.handle(Event::Timer, self.now());
                    self.execute(&m, a);
                }
                r = self.sock.recv(&mut buf) => match r {
                    Ok(n) => {
                        recv_errors = 0;
                        if let Some(ev) = self.accept(&buf[..n]) {
                            let a = m.handle(ev, self.now());
                            self.execute(&m, a);
                        }
                    }
                    Err(e) => {
                        self.metrics.error("recv");
                        recv_errors += 1;
                        if recv_errors % 100 == 1 {
                            tracing::warn!(error = %e, "receiving VRRP packets failed");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                changed = checks.changed(), if checks_open => {
                    if changed.is_err() {
                        // No checks configured (the sender is gone).
                        checks_open = false;
                        continue;
                    }
                    let results = checks.borrow_and_update().clone();
                    let (p, check_fault) = health::effective(self.cfg.priority, &results);
                    for c in &results {
                        if !c.up {
                            tracing::warn!(check = %c.name, error = ?c.last_error, weight = c.weight, "check down");
                        } else {
                            tracing::info!(check = %c.name, weight = c.weight, "check up");
                        }
                    }
                    if p != m.priority() {
                        tracing::info!(from = m.priority(), to = p, "effective priority changed");
                        let a = m.handle(Event::Priority(p), self.now());
                        self.execute(&m, a);
                    }
                    faulted = self.fault_change(&mut m, faulted, check_fault || !link);
                    self.publish(&m, &results, link);
                }
                r = self.link_events.next() => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "link notifications failed; polling instead");
                        self.metrics.error("link_events");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    self.link_check(&mut m, &mut link, &mut faulted, &checks);
                }
                _ = link_poll.tick() => self.link_check(&mut m, &mut link, &mut faulted, &checks),
                _ = tokio::time::sleep_until(garp_at) => self.send_garp(m.state()),
            }
            self.publish_counters(&m);
        }
        let a = m.handle(Event::Shutdown, self.now());
        self.execute(&m, a);
        tracing::info!("VRRP stopped");
        Ok(())
    }

    /// Re-reads the link state and feeds a change to the machine.
    fn link_check(
        &mut self,
        m: &mut Machine,
        link: &mut bool,
        faulted: &mut bool,
        checks: &watch::Receiver<Vec<CheckStatus>>,
    ) {
        let now_up = net::link_up(&self.iface.name);
        if now_up == *link {
            return;
        }
        *link = now_up;
        if now_up {
            tracing::info!(interface = %self.iface.name, "link up");
        } else {
            tracing::warn!(interface = %self.iface.name, "link down");
        }
        let results = checks.borrow().clone();
        let (_, check_fault) = health::effective(self.cfg.priority, &results);
        *faulted = self.fault_change(m, *faulted, check_fault || !now_up);
        self.publish(m, &results, now_up);
    }

    fn fault_change(&mut self, m: &mut Machine, was: bool, is: bool) -> bool {
        if was != is {
            let ev = if is { Event::Fault } else { Event::Recovered };
            let a = m.handle(ev, self.now());
            self.execute(m, a);
        }
        is
    }

    /// Checks a received packet; returns the event for the machine.
    fn accept(&self, buf: &[u8]) -> Option<Event> {
        match packet::receive(buf, self.cfg.vrid) {
            Err(reason) => {
                self.metrics.drop(reason);
                tracing::debug!(%reason, "dropped a packet");
                None
            }
            Ok(rx) => {
                let reason = if rx.src == self.primary {
                    Some(DropReason::Own)
                } else if self.unicast && !self.cfg.peers.contains(&rx.src) {
                    Some(DropReason::NotPeer)
                } else {
                    None
                };
                if let Some(r) = reason {
                    self.metrics.drop(r);
                    tracing::debug!(src = %rx.src, reason = %r, "dropped an advert");
                    return None;
                }
                self.metrics.received.inc();
                Some(Event::Advert {
                    src: rx.src,
                    priority: rx.advert.priority,
                    max_adver_int: rx.advert.max_adver_int,
                })
            }
        }
    }

    fn execute(&mut self, m: &Machine, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::SendAdvert { priority } => self.send_advert(priority),
                Action::AddAddresses => self.add_addresses(),
                Action::RemoveAddresses => self.remove_addresses(),
                Action::GratuitousArp => {
                    self.garp_left = self.cfg.garp_repeat;
                    self.next_garp = Some(Instant::now());
                    self.send_garp(State::Master);
                    self.next_refresh = self.cfg.garp_refresh.map(|r| Instant::now() + r);
                }
                Action::Transition { from, to } => self.transition(m, from, to),
            }
        }
        self.publish_counters(m);
    }

    fn send_advert(&mut self, priority: u8) {
        let advert = Advert {
            vrid: self.cfg.vrid,
            priority,
            max_adver_int: self.cfg.advert_int,
            addresses: self.vips.iter().map(|(v, _)| v.addr).take(255).collect(),
        };
        let dests: Vec<Ipv4Addr> = if !self.unicast {
            vec![packet::MULTICAST_GROUP]
        } else {
            self.cfg.peers.clone()
        };
        for dst in dests {
            let sent = advert
                .encode(self.primary, dst)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                .and_then(|bytes| self.sock.send(&bytes, dst));
            match sent {
                Ok(()) => {
                    self.metrics.sent.inc();
                }
                Err(e) => {
                    self.metrics.error("send");
                    tracing::debug!(%dst, error = %e, "sending an advert failed");
                }
            };
        }
    }

    fn add_addresses(&mut self) {
        for (v, dev) in &self.vips {
            match self.netlink.add(dev.index, v) {
                Ok(()) => tracing::info!(vip = %v, dev = %dev.name, "virtual IP added"),
                Err(e) => {
                    self.metrics.error("add_address");
                    tracing::error!(vip = %v, dev = %dev.name, error = %e, "adding the virtual IP failed");
                }
            }
        }
        self.holding = true;
    }

    fn remove_addresses(&mut self) {
        for (v, dev) in &self.vips {
            match self.netlink.remove(dev.index, v) {
                Ok(()) => tracing::debug!(vip = %v, dev = %dev.name, "virtual IP removed"),
                Err(e) => {
                    self.metrics.error("remove_address");
                    tracing::error!(vip = %v, dev = %dev.name, error = %e, "removing the virtual IP failed");
                }
            }
        }
        self.holding = false;
        self.garp_left = 0;
        self.next_garp = None;
        self.next_refresh = None;
    }

    /// Sends what is due of the current burst and the periodic refresh.
    fn send_garp(&mut self, state: State) {
        let now = Instant::now();
        if state != State::Master || !self.holding {
            self.garp_left = 0;
            self.next_garp = None;
            self.next_refresh = None;
            return;
        }
        let burst_due = self.garp_left > 0 && self.next_garp.is_some_and(|t| t <= now);
        let refresh_due = self.next_refresh.is_some_and(|t| t <= now);
        if !burst_due && !refresh_due {
            return;
        }
        for (v, dev) in &self.vips {
            if let Err(e) = self.arp.announce(dev, v.addr) {
                self.metrics.error("garp");
                tracing::debug!(vip = %v.addr, error = %e, "gratuitous ARP failed");
            }
        }
        if burst_due {
            self.garp_left -= 1;
            self.next_garp = (self.garp_left > 0).then(|| now + GARP_SPACING);
        }
        if refresh_due {
            self.next_refresh = self.cfg.garp_refresh.map(|r| now + r);
        }
    }

    fn transition(&mut self, m: &Machine, from: State, to: State) {
        tracing::info!(
            from = from.name(),
            to = to.name(),
            priority = m.priority(),
            master = ?m.master(),
            "state change"
        );
        self.metrics.state.set(to.code());
        self.metrics
            .transitions
            .get_or_create(&label("to", to.name()))
            .inc();
        {
            let at_unix_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let mut st = self.lock_status();
            st.transitions += 1;
            st.recent_transitions.push(Transition {
                from,
                to,
                priority: m.priority(),
                at_unix_ms,
            });
            if st.recent_transitions.len() > RECENT_TRANSITIONS {
                st.recent_transitions.remove(0);
            }
        }
        if let Some(cmd) = &self.cfg.notify {
            notify(cmd, self.cfg.vrid, to, m.priority());
        }
    }

    fn publish(&self, m: &Machine, checks: &[CheckStatus], link: bool) {
        for c in checks {
            self.metrics
                .check_up
                .get_or_create(&label("check", &c.name))
                .set(i64::from(c.up));
        }
        let mut st = self.lock_status();
        st.checks = checks.to_vec();
        st.link_up = link;
        drop(st);
        self.publish_counters(m);
    }

    fn publish_counters(&self, m: &Machine) {
        self.metrics.priority.set(i64::from(m.priority()));
        self.metrics.state.set(m.state().code());
        let mut dropped = std::collections::BTreeMap::new();
        for r in DropReason::ALL {
            let n = self
                .metrics
                .dropped
                .get_or_create(&label("reason", r.label()))
                .get();
            if n > 0 {
                dropped.insert(r.label().to_string(), n);
            }
        }
        let mut st = self.lock_status();
        st.state = m.state();
        st.effective_priority = m.priority();
        st.master = m.master().map(|a| a.to_string());
        st.master_adver_int_cs = m.master_adver_int();
        st.holding = self.holding;
        st.adverts_sent = self.metrics.sent.get();
        st.adverts_received = self.metrics.received.get();
        st.adverts_dropped = dropped;
    }
}

/// Runs the notify command as keepalived does (`CMD INSTANCE VI_<vrid>
/// STATE PRIORITY`, with `VIP_STATE`, `VIP_PRIORITY` and `VIP_VRID` in the
/// environment), in the background, killed after [`NOTIFY_TIMEOUT`].
fn notify(cmd: &[String], vrid: u8, state: State, priority: u8) {
    let Some((program, args)) = cmd.split_first() else {
        return;
    };
    let mut c = tokio::process::Command::new(program);
    c.args(args)
        .arg("INSTANCE")
        .arg(format!("VI_{vrid}"))
        .arg(state.name())
        .arg(priority.to_string())
        .env("VIP_STATE", state.name())
        .env("VIP_PRIORITY", priority.to_string())
        .env("VIP_VRID", vrid.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match c.spawn() {
        Ok(mut child) => {
            let program = program.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(NOTIFY_TIMEOUT, child.wait()).await {
                    Ok(Ok(s)) if s.success() => {}
                    Ok(Ok(s)) => tracing::warn!(%program, status = %s, "notify command failed"),
                    Ok(Err(e)) => tracing::warn!(%program, error = %e, "notify command failed"),
                    Err(_) => {
                        tracing::warn!(%program, "notify command ran too long; killed");
                        let _ = child.kill().await;
                    }
                }
            });
        }
        Err(e) => tracing::warn!(%program, error = %e, "could not run the notify command"),
    }
}
