//! The VRRP state machine of RFC 5798 §6.4, as pure code: a [`Machine`]
//! takes an [`Event`] at a time `now` and returns the [`Action`]s the agent
//! must carry out. No clocks, sockets or addresses are touched here, so the
//! whole protocol can be simulated with a virtual clock (see the tests).
//!
//! Time is a [`Duration`] since an arbitrary origin (the agent uses its
//! start). The machine keeps one deadline: the Adver_Timer in Master, the
//! Master_Down_Timer in Backup; the agent calls [`Event::Timer`] once
//! [`Machine::deadline`] has passed.
//!
//! Beyond the RFC, as keepalived does: a Fault state (a failing check
//! without weight, or the link is down) in which the node never becomes
//! master; a master leaving for Fault sends a priority-0 advert; a master
//! hearing a lower priority answers at once ("forcing a new election") so
//! the other side steps down without waiting for its timer; an initial
//! state hint of MASTER claims mastership at once instead of waiting the
//! Master_Down_Interval; and `preempt_delay` holds back preemption of a
//! lower-priority master for a while after start-up.

use std::net::Ipv4Addr;
use std::time::Duration;

/// Time since an arbitrary origin.
pub type Time = Duration;

/// The RFC's states, plus keepalived's FAULT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Not running (before start-up and after shutdown).
    #[serde(rename = "INIT")]
    Initialize,
    /// Watching the master; takes over when it goes quiet.
    Backup,
    /// Holding the virtual addresses and advertising.
    Master,
    /// Unhealthy: never master, sends nothing.
    Fault,
}

impl State {
    /// Upper-case name, as keepalived prints it and notify scripts get it.
    pub fn name(self) -> &'static str {
        match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        }
    }

    /// Number for the `vip_state` gauge.
    pub fn code(self) -> i64 {
        match self {
            State::Initialize => 0,
            State::Backup => 1,
            State::Master => 2,
            State::Fault => 3,
        }
    }
}

/// Fixed parameters of one virtual router on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// This node's primary address (the source of its adverts; breaks ties).
    pub primary: Ipv4Addr,
    /// Advertisement_Interval in centiseconds (1–4095).
    pub advert_int: u16,
    /// Whether a higher-priority backup takes over from a lower master.
    pub preempt: bool,
    /// How long after start-up preemption is held back.
    pub preempt_delay: Duration,
    /// keepalived's `state MASTER`: claim mastership at once on start-up.
    pub start_as_master: bool,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The agent starts.
    Startup,
    /// The agent stops cleanly.
    Shutdown,
    /// The deadline passed.
    Timer,
    /// A valid advertisement for our VRID arrived.
    Advert {
        /// Sender's primary address.
        src: Ipv4Addr,
        /// Sender's priority (0: it is leaving).
        priority: u8,
        /// Sender's advertisement interval (centiseconds).
        max_adver_int: u16,
    },
    /// The effective priority changed (health weights).
    Priority(u8),
    /// A check without weight failed, or the link went down.
    Fault,
    /// Every fault cleared.
    Recovered,
}

/// Something the agent must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority (0 when leaving).
    SendAdvert {
        /// Priority to advertise.
        priority: u8,
    },
    /// Add the virtual addresses to their interfaces.
    AddAddresses,
    /// Remove the virtual addresses.
    RemoveAddresses,
    /// Announce the virtual addresses with gratuitous ARP.
    GratuitousArp,
    /// The state changed (log it, count it, run the notify hook).
    Transition {
        /// Old state.
        from: State,
        /// New state.
        to: State,
    },
}

/// Skew_Time of RFC 5798 §6.1: ((256 − priority) × Master_Adver_Interval) / 256.
pub fn skew_time(priority: u8, master_adver_int: u16) -> Duration {
    let cs = (256 - u64::from(priority)) * u64::from(master_adver_int);
    // Kept in microseconds rather than truncated to whole centiseconds.
    Duration::from_micros(cs * 10_000 / 256)
}

/// Master_Down_Interval: 3 × Master_Adver_Interval + Skew_Time.
pub fn master_down_interval(priority: u8, master_adver_int: u16) -> Duration {
    centis(master_adver_int) * 3 + skew_time(priority, master_adver_int)
}

/// Centiseconds as a duration.
pub fn centis(cs: u16) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

/// One virtual router's state machine. See the module docs.
#[derive(Debug, Clone)]
pub struct Machine {
    params: Params,
    state: State,
    priority: u8,
    master_adver_int: u16,
    deadline: Option<Time>,
    master: Option<Ipv4Addr>,
    preempt_after: Time,
    fault: bool,
}

impl Machine {
    /// A machine in Initialize with effective priority `priority`.
    pub fn new(params: Params, priority: u8) -> Self {
        let master_adver_int = params.advert_int;
        Machine {
            params,
            state: State::Initialize,
            priority,
            master_adver_int,
            deadline: None,
            master: None,
            preempt_after: Duration::ZERO,
            fault: false,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Current effective priority.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// When [`Event::Timer`] is due, if a timer runs.
    pub fn deadline(&self) -> Option<Time> {
        self.deadline
    }

    /// The current master's address, as far as this node knows.
    pub fn master(&self) -> Option<Ipv4Addr> {
        self.master
    }

    /// The master's advertisement interval (centiseconds) this node uses.
    pub fn master_adver_int(&self) -> u16 {
        self.master_adver_int
    }

    /// The fixed parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Feeds one event; returns what to do.
    pub fn handle(&mut self, event: Event, now: Time) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.state, event) {
            (_, Event::Priority(p)) => {
                let changed = p != self.priority;
                self.priority = p;
                if changed && self.state == State::Master {
                    // Tell the backups now, so a better one preempts at once.
                    out.push(Action::SendAdvert { priority: p });
                    self.deadline = Some(now + centis(self.params.advert_int));
                }
            }
            (State::Initialize, Event::Startup) => {
                self.preempt_after = now + self.params.preempt_delay;
                if self.fault {
                    self.enter(State::Fault, now, &mut out);
                } else if self.priority == 255 {
                    self.become_master(now, &mut out);
                } else {
                    self.enter_backup(now, self.params.advert_int, &mut out);
                    if self.params.start_as_master {
                        self.deadline = Some(now);
                    }
                }
            }
            (State::Initialize, Event::Fault) => self.fault = true,
            (State::Initialize, Event::Recovered) => self.fault = false,
            (State::Initialize, _) => {}

            (State::Backup, Event::Shutdown) => self.enter(State::Initialize, now, &mut out),
            (State::Backup, Event::Fault) => {
                self.fault = true;
                self.enter(State::Fault, now, &mut out);
            }
            (State::Backup, Event::Timer) => {
                if self.due(now) {
                    self.become_master(now, &mut out);
                }
            }
            (
                State::Backup,
                Event::Advert {
                    src,
                    priority,
                    max_adver_int,
                },
            ) => {
                if priority == 0 {
                    // The master is leaving: take over after the skew only.
                    self.deadline = Some(now + skew_time(self.priority, self.master_adver_int));
                } else if !self.params.preempt
                    || priority >= self.priority
                    || now < self.preempt_after
                {
                    self.master_adver_int = max_adver_int;
                    self.master = Some(src);
                    self.deadline = Some(now + self.down_interval());
                }
                // Otherwise: a lower-priority master we preempt; let the
                // down timer run out.
            }
            (State::Backup, Event::Startup | Event::Recovered) => {}

            (State::Master, Event::Shutdown) => {
                out.push(Action::SendAdvert { priority: 0 });
                out.push(Action::RemoveAddresses);
                self.enter(State::Initialize, now, &mut out);
            }
            (State::Master, Event::Fault) => {
                self.fault = true;
                out.push(Action::SendAdvert { priority: 0 });
                out.push(Action::RemoveAddresses);
                self.enter(State::Fault, now, &mut out);
            }
            (State::Master, Event::Timer) => {
                if self.due(now) {
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.deadline = Some(now + centis(self.params.advert_int));
                }
            }
            (
                State::Master,
                Event::Advert {
                    src,
                    priority,
                    max_adver_int,
                },
            ) => {
                if priority == 0 {
                    // Another master left: confirm we are here.
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.deadline = Some(now + centis(self.params.advert_int));
                } else if priority > self.priority
                    || (priority == self.priority && src > self.params.primary)
                {
                    out.push(Action::RemoveAddresses);
                    self.enter_backup(now, max_adver_int, &mut out);
                    self.master = Some(src);
                } else if src != self.params.primary {
                    // A lower master (e.g. after a partition healed): answer
                    // now so it steps down without waiting for our timer.
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.deadline = Some(now + centis(self.params.advert_int));
                }
            }
            (State::Master, Event::Startup | Event::Recovered) => {}

            (State::Fault, Event::Shutdown) => self.enter(State::Initialize, now, &mut out),
            (State::Fault, Event::Recovered) => {
                self.fault = false;
                self.enter_backup(now, self.params.advert_int, &mut out);
            }
            (State::Fault, Event::Fault) => self.fault = true,
            (State::Fault, _) => {}
        }
        out
    }

    fn due(&self, now: Time) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    fn down_interval(&self) -> Duration {
        master_down_interval(self.priority, self.master_adver_int)
    }

    fn enter(&mut self, to: State, _now: Time, out: &mut Vec<Action>) {
        let from = self.state;
        self.state = to;
        if to != State::Backup && to != State::Master {
            self.deadline = None;
            self.master = None;
        }
        if from != to {
            out.push(Action::Transition { from, to });
        }
    }

    fn enter_backup(&mut self, now: Time, master_adver_int: u16, out: &mut Vec<Action>) {
        self.master_adver_int = master_adver_int;
        self.master = None;
        self.deadline = Some(now + self.down_interval());
        self.enter(State::Backup, now, out);
    }

    fn become_master(&mut self, now: Time, out: &mut Vec<Action>) {
        out.push(Action::SendAdvert {
            priority: self.priority,
        });
        out.push(Action::AddAddresses);
        out.push(Action::GratuitousArp);
        self.master = Some(self.params.primary);
        self.master_adver_int = self.params.advert_int;
        self.deadline = Some(now + centis(self.params.advert_int));
        self.enter(State::Master, now, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BinaryHeap;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, last)
    }

    fn params(last: u8) -> Params {
        Params {
            primary: ip(last),
            advert_int: 10,
            preempt: true,
            preempt_delay: Duration::ZERO,
            start_as_master: false,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn timers_follow_the_rfc() {
        assert_eq!(skew_time(255, 100), Duration::from_micros(3906));
        assert_eq!(skew_time(1, 100), Duration::from_micros(996_093));
        assert_eq!(
            master_down_interval(100, 100),
            Duration::from_secs(3) + Duration::from_micros(609_375)
        );
        // The defaults: 10 cs adverts fail over in well under half a second.
        assert!(master_down_interval(100, 10) < ms(400));
    }

    #[test]
    fn lone_backup_becomes_master_after_the_down_interval() {
        let mut m = Machine::new(params(1), 100);
        let a = m.handle(Event::Startup, ms(0));
        assert_eq!(
            a,
            vec![Action::Transition {
                from: State::Initialize,
                to: State::Backup
            }]
        );
        let due = m.deadline().unwrap();
        assert_eq!(due, master_down_interval(100, 10));
        assert!(m.handle(Event::Timer, due - ms(1)).is_empty());
        let a = m.handle(Event::Timer, due);
        assert_eq!(
            a,
            vec![
                Action::SendAdvert { priority: 100 },
                Action::AddAddresses,
                Action::GratuitousArp,
                Action::Transition {
                    from: State::Backup,
                    to: State::Master
                }
            ]
        );
        assert_eq!(m.deadline(), Some(due + ms(100)));
    }

    #[test]
    fn owner_and_master_hint_start_at_once() {
        let mut m = Machine::new(params(1), 255);
        m.handle(Event::Startup, ms(0));
        assert_eq!(m.state(), State::Master);
        let mut m = Machine::new(
            Params {
                start_as_master: true,
                ..params(1)
            },
            100,
        );
        m.handle(Event::Startup, ms(0));
        m.handle(Event::Timer, ms(0));
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn master_steps_down_for_higher_priority_or_higher_address() {
        for (prio, src) in [(101, ip(0)), (100, ip(9))] {
            let mut m = Machine::new(params(5), 100);
            m.handle(Event::Startup, ms(0));
            m.handle(Event::Timer, ms(1000));
            assert_eq!(m.state(), State::Master);
            let a = m.handle(
                Event::Advert {
                    src,
                    priority: prio,
                    max_adver_int: 50,
                },
                ms(1010),
            );
            assert_eq!(a[0], Action::RemoveAddresses);
            assert_eq!(m.state(), State::Backup);
            assert_eq!(m.master(), Some(src));
            assert_eq!(m.deadline(), Some(ms(1010) + master_down_interval(100, 50)));
        }
        // Lower priority, or same priority from a lower address: stay,
        // and answer at once.
        for (prio, src) in [(99, ip(9)), (100, ip(1))] {
            let mut m = Machine::new(params(5), 100);
            m.handle(Event::Startup, ms(0));
            m.handle(Event::Timer, ms(1000));
            let a = m.handle(
                Event::Advert {
                    src,
                    priority: prio,
                    max_adver_int: 10,
                },
                ms(1010),
            );
            assert_eq!(a, vec![Action::SendAdvert { priority: 100 }]);
            assert_eq!(m.state(), State::Master);
        }
    }

    #[test]
    fn priority_zero_hands_over_after_the_skew() {
        let mut m = Machine::new(params(1), 200);
        m.handle(Event::Startup, ms(0));
        let leave = Event::Advert {
            src: ip(2),
            priority: 0,
            max_adver_int: 10,
        };
        m.handle(leave, ms(50));
        assert_eq!(m.deadline(), Some(ms(50) + skew_time(200, 10)));
        assert!(skew_time(200, 10) < ms(25));
    }

    #[test]
    fn clean_shutdown_sends_priority_zero() {
        let mut m = Machine::new(params(1), 100);
        m.handle(Event::Startup, ms(0));
        m.handle(Event::Timer, ms(500));
        let a = m.handle(Event::Shutdown, ms(600));
        assert_eq!(
            &a[..2],
            &[Action::SendAdvert { priority: 0 }, Action::RemoveAddresses]
        );
        assert_eq!(m.state(), State::Initialize);
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn nopreempt_and_preempt_delay_keep_a_lower_master() {
        let low = Event::Advert {
            src: ip(2),
            priority: 50,
            max_adver_int: 10,
        };
        let mut m = Machine::new(
            Params {
                preempt: false,
                ..params(1)
            },
            100,
        );
        m.handle(Event::Startup, ms(0));
        for t in 0..100 {
            m.handle(low.clone(), ms(t * 100));
            m.handle(Event::Timer, ms(t * 100 + 1));
        }
        assert_eq!(m.state(), State::Backup);

        let mut m = Machine::new(
            Params {
                preempt_delay: Duration::from_secs(2),
                ..params(1)
            },
            100,
        );
        m.handle(Event::Startup, ms(0));
        let mut took_over = None;
        for t in 0..60 {
            m.handle(low.clone(), ms(t * 100));
            m.handle(Event::Timer, ms(t * 100 + 1));
            if m.state() == State::Master && took_over.is_none() {
                took_over = Some(t * 100);
            }
        }
        let t = took_over.expect("preempts after the delay");
        assert!((2000..2600).contains(&t), "took over at {t} ms");
    }

    #[test]
    fn fault_is_never_master_and_recovers_to_backup() {
        let mut m = Machine::new(params(1), 100);
        m.handle(Event::Fault, ms(0));
        m.handle(Event::Startup, ms(0));
        assert_eq!(m.state(), State::Fault);
        for t in 0..50 {
            m.handle(Event::Timer, ms(t * 100));
        }
        assert_eq!(m.state(), State::Fault);
        m.handle(Event::Recovered, ms(5000));
        assert_eq!(m.state(), State::Backup);
        m.handle(Event::Timer, ms(6000));
        assert_eq!(m.state(), State::Master);
        let a = m.handle(Event::Fault, ms(6100));
        assert_eq!(
            &a[..2],
            &[Action::SendAdvert { priority: 0 }, Action::RemoveAddresses]
        );
        assert_eq!(m.state(), State::Fault);
    }

    #[test]
    fn master_announces_a_priority_change_at_once() {
        let mut m = Machine::new(params(1), 100);
        m.handle(Event::Startup, ms(0));
        m.handle(Event::Timer, ms(500));
        let a = m.handle(Event::Priority(60), ms(550));
        assert_eq!(a, vec![Action::SendAdvert { priority: 60 }]);
        assert_eq!(m.priority(), 60);
    }

    // ---- Simulation: N routers on one virtual LAN, virtual clock. ----

    /// One-way LAN latency. Below the smallest skew difference between two
    /// priorities at 10 cs adverts (10 ms / 256 ≈ 39 µs × 10), as on a LAN.
    const DELAY: Duration = Duration::from_micros(100);

    /// One simulated router.
    struct Node {
        m: Machine,
        alive: bool,
        /// Which side of a partition it is on.
        side: u8,
    }

    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Delivery {
        at: std::cmp::Reverse<Duration>,
        seq: std::cmp::Reverse<u64>,
        to: usize,
        from: usize,
        priority: u8,
        interval: u16,
    }

    struct Lan {
        nodes: Vec<Node>,
        queue: BinaryHeap<Delivery>,
        now: Duration,
        seq: u64,
        delay: Duration,
        /// (time, masters) after every step, for the checks.
        trace: Vec<(Duration, Vec<usize>)>,
    }

    impl Lan {
        fn new(prios: &[u8], preempt: bool, advert_int: u16, delay: Duration) -> Lan {
            let nodes = prios
                .iter()
                .enumerate()
                .map(|(i, &p)| Node {
                    m: Machine::new(
                        Params {
                            preempt,
                            advert_int,
                            ..params(i as u8 + 1)
                        },
                        p,
                    ),
                    alive: false,
                    side: 0,
                })
                .collect();
            Lan {
                nodes,
                queue: BinaryHeap::new(),
                now: Duration::ZERO,
                seq: 0,
                delay,
                trace: Vec::new(),
            }
        }

        fn apply(&mut self, i: usize, actions: Vec<Action>) {
            for a in actions {
                if let Action::SendAdvert { priority } = a {
                    let interval = self.nodes[i].m.params().advert_int;
                    for to in 0..self.nodes.len() {
                        if to != i {
                            self.seq += 1;
                            self.queue.push(Delivery {
                                at: std::cmp::Reverse(self.now + self.delay),
                                seq: std::cmp::Reverse(self.seq),
                                to,
                                from: i,
                                priority,
                                interval,
                            });
                        }
                    }
                }
            }
        }

        fn event(&mut self, i: usize, e: Event) {
            let now = self.now;
            let a = self.nodes[i].m.handle(e, now);
            self.apply(i, a);
        }

        fn start(&mut self, i: usize) {
            self.nodes[i].alive = true;
            self.nodes[i].m =
                Machine::new(self.nodes[i].m.params().clone(), self.nodes[i].m.priority());
            self.event(i, Event::Startup);
        }

        /// kill -9: silent from now on.
        fn crash(&mut self, i: usize) {
            self.nodes[i].alive = false;
        }

        fn stop(&mut self, i: usize) {
            self.event(i, Event::Shutdown);
            self.nodes[i].alive = false;
        }

        fn masters(&self) -> Vec<usize> {
            (0..self.nodes.len())
                .filter(|&i| self.nodes[i].alive && self.nodes[i].m.state() == State::Master)
                .collect()
        }

        /// Runs the LAN until `until`.
        fn run(&mut self, until: Duration) {
            for _ in 0..1_000_000 {
                let next_timer = (0..self.nodes.len())
                    .filter(|&i| self.nodes[i].alive)
                    .filter_map(|i| self.nodes[i].m.deadline().map(|d| (d, i)))
                    .min();
                let next_msg = self.queue.peek().map(|d| d.at.0);
                let t = match (next_timer, next_msg) {
                    (Some((a, _)), Some(b)) => a.min(b),
                    (Some((a, _)), None) => a,
                    (None, Some(b)) => b,
                    (None, None) => {
                        self.now = until;
                        return;
                    }
                };
                if t > until {
                    self.now = until;
                    return;
                }
                self.now = t;
                if next_msg == Some(t) {
                    let d = self.queue.pop().unwrap();
                    let (to, from) = (d.to, d.from);
                    if self.nodes[to].alive && self.nodes[to].side == self.nodes[from].side {
                        self.event(
                            to,
                            Event::Advert {
                                src: ip(from as u8 + 1),
                                priority: d.priority,
                                max_adver_int: d.interval,
                            },
                        );
                    }
                } else if let Some((_, i)) = next_timer {
                    self.event(i, Event::Timer);
                }
                let masters = self.masters();
                self.trace.push((self.now, masters));
            }
            panic!("simulation did not reach {until:?}");
        }

        /// Largest number of simultaneous masters seen after `from`.
        fn max_masters_since(&self, from: Duration) -> usize {
            self.trace
                .iter()
                .filter(|(t, _)| *t >= from)
                .map(|(_, m)| m.len())
                .max()
                .unwrap_or(0)
        }

        /// First time at or after `from` when `pred` held for the masters.
        fn first_time(&self, from: Duration, pred: impl Fn(&[usize]) -> bool) -> Option<Duration> {
            self.trace
                .iter()
                .find(|(t, m)| *t >= from && pred(m))
                .map(|(t, _)| *t)
        }
    }

    /// The node that must win: highest priority, ties to the highest address.
    fn best(prios: &[u8], alive: impl Fn(usize) -> bool) -> usize {
        (0..prios.len())
            .filter(|&i| alive(i))
            .max_by_key(|&i| (prios[i], i))
            .unwrap()
    }

    /// Distinct priorities: with equal ones, two backups whose timers fire
    /// together both claim for one round trip (inherent to VRRP).
    fn arb_distinct_lan() -> impl Strategy<Value = (Vec<u8>, u16)> {
        (2usize..6).prop_flat_map(|n| {
            (
                prop::sample::subsequence((1u8..=254).collect::<Vec<_>>(), n).prop_shuffle(),
                prop::sample::select(vec![10u16, 25, 100]),
            )
        })
    }

    fn arb_lan() -> impl Strategy<Value = (Vec<u8>, Vec<u64>, u16)> {
        (2usize..6).prop_flat_map(|n| {
            (
                prop::collection::vec(1u8..=254, n),
                prop::collection::vec(0u64..3000, n),
                prop::sample::select(vec![10u16, 25, 100]),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the priorities and start times, the LAN converges to
        /// exactly one master, it is the best node (with preemption), and it
        /// stays the only one.
        #[test]
        fn converges_to_the_single_best_master((prios, starts, adv) in arb_lan()) {
            let mut lan = Lan::new(&prios, true, adv, DELAY);
            let mut order: Vec<usize> = (0..prios.len()).collect();
            order.sort_by_key(|&i| starts[i]);
            for i in order {
                lan.run(ms(starts[i]));
                lan.start(i);
            }
            let settle = ms(3000) + centis(adv) * 5;
            lan.run(settle + Duration::from_secs(10));
            // Ties go to whoever claimed first, so only the priority of
            // the winner is certain.
            let top = *prios.iter().max().unwrap();
            let masters = lan.masters();
            prop_assert_eq!(masters.len(), 1);
            prop_assert_eq!(prios[masters[0]], top);
            prop_assert_eq!(lan.max_masters_since(settle), 1);
            let changed = lan.trace.iter().filter(|(t, _)| *t >= settle).any(|(_, m)| *m != masters);
            prop_assert!(!changed, "the master changed after convergence");
        }

        /// kill -9 of the master: the best survivor takes over within the
        /// Master_Down_Interval (plus a skew of preemption), and there is
        /// never more than one master.
        #[test]
        fn crash_of_the_master_fails_over((prios, adv) in arb_distinct_lan()) {
            let mut lan = Lan::new(&prios, true, adv, DELAY);
            for i in 0..prios.len() { lan.start(i); }
            let t0 = Duration::from_secs(5) + centis(adv) * 5;
            lan.run(t0);
            let old = best(&prios, |_| true);
            prop_assert_eq!(lan.masters(), vec![old]);
            lan.crash(old);
            lan.run(t0 + Duration::from_secs(15));
            let new = best(&prios, |i| i != old);
            prop_assert_eq!(lan.masters(), vec![new]);
            let first = lan.first_time(t0, |m| !m.is_empty()).unwrap();
            // Whoever claims first does so within one down interval.
            prop_assert!(first - t0 <= master_down_interval(1, adv) + DELAY * 2);
            prop_assert_eq!(lan.max_masters_since(t0), 1);
        }

        /// Clean stop: a priority-0 advert hands over within the skew time.
        #[test]
        fn clean_stop_hands_over_within_the_skew((prios, adv) in arb_distinct_lan()) {
            let mut lan = Lan::new(&prios, true, adv, DELAY);
            for i in 0..prios.len() { lan.start(i); }
            let t0 = Duration::from_secs(5) + centis(adv) * 5;
            lan.run(t0);
            let old = best(&prios, |_| true);
            lan.stop(old);
            lan.run(t0 + Duration::from_secs(10));
            let first = lan.first_time(t0, |m| !m.is_empty()).unwrap();
            prop_assert!(first - t0 <= skew_time(1, adv) + DELAY * 2, "took {:?}", first - t0);
            prop_assert_eq!(lan.masters(), vec![best(&prios, |i| i != old)]);
            prop_assert_eq!(lan.max_masters_since(t0), 1);
        }

        /// A partition makes one master per side; healing leaves one.
        #[test]
        fn split_network_heals_to_one_master((prios, adv) in arb_distinct_lan(), cut in any::<prop::sample::Index>()) {
            let mut lan = Lan::new(&prios, true, adv, DELAY);
            for i in 0..prios.len() { lan.start(i); }
            lan.run(Duration::from_secs(5));
            let cut = 1 + cut.index(prios.len() - 1);
            for i in cut..prios.len() { lan.nodes[i].side = 1; }
            lan.run(Duration::from_secs(15));
            prop_assert_eq!(lan.masters().len(), 2);
            for n in &mut lan.nodes { n.side = 0; }
            let healed = Duration::from_secs(15);
            lan.run(healed + Duration::from_secs(10));
            prop_assert_eq!(lan.masters(), vec![best(&prios, |_| true)]);
            // One round trip after healing, one master is left.
            let single = lan.first_time(healed, |m| m.len() == 1).unwrap();
            prop_assert!(single - healed <= centis(adv) + DELAY * 3, "took {:?}", single - healed);
        }

        /// Without preemption, a returning better node stays backup.
        #[test]
        fn nopreempt_keeps_the_current_master((prios, adv) in arb_distinct_lan()) {
            let mut lan = Lan::new(&prios, false, adv, DELAY);
            for i in 0..prios.len() { lan.start(i); }
            lan.run(Duration::from_secs(5));
            let first = lan.masters();
            prop_assert_eq!(first.len(), 1);
            let old = first[0];
            lan.crash(old);
            lan.run(Duration::from_secs(15));
            let second = lan.masters();
            prop_assert_eq!(second.len(), 1);
            lan.start(old);
            lan.run(Duration::from_secs(30));
            prop_assert_eq!(lan.masters(), second.clone());
            prop_assert_eq!(lan.max_masters_since(Duration::from_secs(5)), 1);
        }
    }
}
