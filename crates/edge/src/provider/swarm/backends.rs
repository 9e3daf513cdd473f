//! Where a service's requests go: the IPs of its running tasks on the
//! network edge shares with it (or its VIP with `lbswarm=true`).
//!
//! A task counts only while its state *and* its desired state are
//! `running`: Swarm sets the desired state to `shutdown` before it stops a
//! task (rolling update, scale down, `service rm`), so the task leaves the
//! list — and stops receiving new requests — before it dies, while
//! requests already in flight finish on their open connections.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;

use super::labels::{Issue, ServiceLabels};
use super::{SwarmNetwork, SwarmService, SwarmState};

/// Task counts of one service, for diagnostics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskSummary {
    /// Replicas asked for (`None` for global services).
    pub desired: Option<u64>,
    /// Tasks running and meant to run.
    pub running: usize,
    /// Other tasks meant to run, by state (`preparing`, `starting`, …).
    pub other: BTreeMap<String, usize>,
    /// The last error Swarm reported for a task of the service, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The outcome of [`resolve`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backends {
    /// Name of the network the addresses are on.
    pub network: Option<String>,
    /// Addresses, sorted, without duplicates.
    pub ips: Vec<IpAddr>,
    /// The address is the service VIP (`lbswarm`).
    pub vip: bool,
    /// Task counts.
    pub tasks: TaskSummary,
    /// Why there are no addresses, or what was guessed.
    pub issues: Vec<Issue>,
}

/// Whether a task is a backend: running and meant to keep running.
pub fn is_serving(state: &str, desired: &str) -> bool {
    state == "running" && desired == "running"
}

/// Finds a network by ID, by name, or by `<stack>_<name>` for services
/// deployed with `docker stack deploy` (whose networks are prefixed).
pub fn find_network<'a>(
    networks: &'a [SwarmNetwork],
    wanted: &str,
    stack: Option<&str>,
) -> Option<&'a SwarmNetwork> {
    networks
        .iter()
        .find(|n| n.id == wanted || n.name == wanted)
        .or_else(|| {
            let stack = stack?;
            let prefixed = format!("{stack}_{wanted}");
            networks.iter().find(|n| n.name == prefixed)
        })
}

/// Resolves the backends of `svc`. `edge_networks` are the IDs of the
/// networks edge can reach, when known.
pub fn resolve(
    svc: &SwarmService,
    state: &SwarmState,
    edge_networks: Option<&BTreeSet<String>>,
    labels: &ServiceLabels,
) -> Backends {
    let mut out = Backends::default();
    let stack = svc
        .labels
        .get("com.docker.stack.namespace")
        .map(String::as_str);
    let tasks: Vec<_> = state
        .tasks
        .iter()
        .filter(|t| t.service_id == svc.id && t.desired_state == "running")
        .collect();
    out.tasks.desired = svc.replicas;
    for t in &tasks {
        if is_serving(&t.state, &t.desired_state) {
            out.tasks.running += 1;
        } else {
            *out.tasks.other.entry(t.state.clone()).or_default() += 1;
        }
        if let Some(e) = t.error.as_ref().filter(|e| !e.is_empty()) {
            out.tasks.last_error = Some(format!("task {}: {e}", short_id(&t.id)));
        }
    }

    // The service's networks: from its spec and from its tasks, without
    // the ingress network (the routing mesh is not a backend path).
    let mut mine: BTreeMap<String, &SwarmNetwork> = BTreeMap::new();
    for target in &svc.networks {
        if let Some(n) = find_network(&state.networks, target, None) {
            mine.insert(n.id.clone(), n);
        }
    }
    for t in &tasks {
        for (net, _) in &t.addresses {
            if let Some(n) = state.networks.iter().find(|n| &n.id == net) {
                mine.insert(n.id.clone(), n);
            }
        }
    }
    mine.retain(|_, n| !n.ingress);
    let names = |set: &mut dyn Iterator<Item = &SwarmNetwork>| -> String {
        let v: Vec<&str> = set.map(|n| n.name.as_str()).collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    };
    let edge_names = |state: &SwarmState| -> String {
        match edge_networks {
            Some(ids) => names(&mut state.networks.iter().filter(|n| ids.contains(&n.id))),
            None => "unknown".into(),
        }
    };

    let net_label = labels.network_label.as_deref();
    let chosen: &SwarmNetwork = if let Some(wanted) = &labels.network {
        let Some(n) = find_network(&state.networks, wanted, stack) else {
            out.issues.push(Issue::error(
                net_label,
                format!(
                    "network {wanted:?} does not exist; the service is on: {}. Fix the label (stack networks are named <stack>_<network>)",
                    names(&mut mine.values().copied())
                ),
            ));
            return out;
        };
        if !mine.contains_key(&n.id) {
            out.issues.push(Issue::error(
                net_label,
                format!(
                    "the service is not attached to network {:?} (it is on: {}): add it, e.g. docker service update --network-add {} {}",
                    n.name,
                    names(&mut mine.values().copied()),
                    n.name,
                    svc.name
                ),
            ));
            return out;
        }
        if edge_networks.is_some_and(|ids| !ids.contains(&n.id)) {
            out.issues.push(Issue::error(
                net_label,
                format!(
                    "edge is not attached to network {:?} (edge is on: {}): attach edge to it or pick a network you share",
                    n.name,
                    edge_names(state)
                ),
            ));
            return out;
        }
        n
    } else {
        let shared: Vec<&SwarmNetwork> = match edge_networks {
            Some(ids) => mine
                .values()
                .copied()
                .filter(|n| ids.contains(&n.id))
                .collect(),
            None => mine.values().copied().collect(),
        };
        match shared.as_slice() {
            [] if mine.is_empty() => {
                out.issues.push(Issue::error(
                    None,
                    format!(
                        "the service is on no overlay network, so edge cannot reach its tasks: attach it to a network edge is on ({}), e.g. docker service update --network-add <network> {}",
                        edge_names(state),
                        svc.name
                    ),
                ));
                return out;
            }
            [] => {
                out.issues.push(Issue::error(
                    None,
                    format!(
                        "no network shared with edge: the service is on {}, edge is on {}: attach the service to one of edge's networks (docker service update --network-add <network> {})",
                        names(&mut mine.values().copied()),
                        edge_names(state),
                        svc.name
                    ),
                ));
                return out;
            }
            [one] => one,
            [first, ..] => {
                out.issues.push(Issue::warning(
                    None,
                    format!(
                        "several networks could reach the service ({}); using {:?}: set edge.swarm.network (or traefik.swarm.network) to choose",
                        names(&mut shared.iter().copied()),
                        first.name
                    ),
                ));
                first
            }
        }
    };
    out.network = Some(chosen.name.clone());

    if labels.lb_swarm {
        if let Some((_, ip)) = svc.vips.iter().find(|(net, _)| *net == chosen.id) {
            out.vip = true;
            out.ips = vec![*ip];
            return out;
        }
        out.issues.push(Issue::warning(
            Some("traefik.swarm.lbswarm"),
            format!(
                "lbswarm asks for the service VIP, but the service has none on {:?} (endpoint mode dnsrr?): using task IPs",
                chosen.name
            ),
        ));
    }
    let ips: BTreeSet<IpAddr> = tasks
        .iter()
        .filter(|t| is_serving(&t.state, &t.desired_state))
        .flat_map(|t| t.addresses.iter())
        .filter(|(net, _)| *net == chosen.id)
        .map(|(_, ip)| *ip)
        .collect();
    out.ips = ips.into_iter().collect();
    if out.ips.is_empty() {
        let states = if out.tasks.other.is_empty() {
            "none".to_string()
        } else {
            out.tasks
                .other
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let err = out
            .tasks
            .last_error
            .as_ref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        out.issues.push(Issue::error(
            None,
            format!(
                "no running task on network {:?} (other tasks: {states}{err}): see docker service ps {} --no-trunc",
                chosen.name, svc.name
            ),
        ));
    }
    out
}

/// The first 12 characters of an ID, as `docker` prints them.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::super::labels::{self, LabelOptions};
    use super::super::SwarmTask;
    use super::*;

    fn net(id: &str, name: &str) -> SwarmNetwork {
        SwarmNetwork {
            id: id.into(),
            name: name.into(),
            ingress: false,
        }
    }

    fn task(id: &str, svc: &str, state: &str, desired: &str, addrs: &[(&str, &str)]) -> SwarmTask {
        SwarmTask {
            id: id.into(),
            service_id: svc.into(),
            slot: None,
            node_id: "n1".into(),
            state: state.into(),
            desired_state: desired.into(),
            message: String::new(),
            error: None,
            addresses: addrs
                .iter()
                .map(|(n, ip)| (n.to_string(), ip.parse().unwrap()))
                .collect(),
        }
    }

    fn state() -> SwarmState {
        let mut ingress = net("ing", "ingress");
        ingress.ingress = true;
        SwarmState {
            services: vec![SwarmService {
                id: "s1".into(),
                name: "shop_web".into(),
                labels: [("com.docker.stack.namespace".to_string(), "shop".to_string())].into(),
                networks: vec!["n-front".into(), "n-back".into()],
                vips: vec![("n-front".into(), "10.0.1.2".parse().unwrap())],
                target_ports: vec![],
                replicas: Some(3),
            }],
            tasks: vec![
                task(
                    "t1",
                    "s1",
                    "running",
                    "running",
                    &[
                        ("n-front", "10.0.1.5"),
                        ("n-back", "10.0.2.5"),
                        ("ing", "10.255.0.5"),
                    ],
                ),
                task(
                    "t2",
                    "s1",
                    "running",
                    "running",
                    &[("n-front", "10.0.1.4"), ("n-back", "10.0.2.4")],
                ),
                // Shutting down: still running, but no longer a backend.
                task(
                    "t3",
                    "s1",
                    "running",
                    "shutdown",
                    &[("n-front", "10.0.1.9")],
                ),
                task(
                    "t4",
                    "s1",
                    "starting",
                    "running",
                    &[("n-front", "10.0.1.7")],
                ),
            ],
            networks: vec![
                net("n-front", "shop_front"),
                net("n-back", "shop_back"),
                ingress,
            ],
            edge_networks: None,
        }
    }

    fn lbl(pairs: &[(&str, &str)]) -> ServiceLabels {
        let m = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels::parse("shop_web", &m, &LabelOptions::default())
    }

    #[test]
    fn running_tasks_on_the_shared_network_only() {
        let st = state();
        let edge: BTreeSet<String> = ["n-front".to_string()].into();
        let b = resolve(&st.services[0], &st, Some(&edge), &lbl(&[]));
        assert_eq!(b.network.as_deref(), Some("shop_front"));
        let ips: Vec<String> = b.ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, vec!["10.0.1.4", "10.0.1.5"]);
        assert!(b.issues.is_empty(), "{:?}", b.issues);
        assert_eq!(b.tasks.running, 2);
        assert_eq!(b.tasks.other["starting"], 1);
    }

    #[test]
    fn label_picks_the_network_by_short_or_full_name() {
        let st = state();
        for name in ["back", "shop_back", "n-back"] {
            let b = resolve(
                &st.services[0],
                &st,
                None,
                &lbl(&[("traefik.swarm.network", name)]),
            );
            assert_eq!(b.network.as_deref(), Some("shop_back"), "{name}");
            assert_eq!(b.ips.len(), 2);
        }
    }

    #[test]
    fn several_candidates_warn_and_pick_deterministically() {
        let st = state();
        let b = resolve(&st.services[0], &st, None, &lbl(&[]));
        assert_eq!(b.network.as_deref(), Some("shop_back"));
        assert!(b.issues[0].message.contains("set edge.swarm.network"));
    }

    #[test]
    fn no_shared_network_is_explained() {
        let st = state();
        let edge: BTreeSet<String> = ["other".to_string()].into();
        let b = resolve(&st.services[0], &st, Some(&edge), &lbl(&[]));
        assert!(b.ips.is_empty());
        assert!(
            b.issues[0].message.contains("no network shared with edge"),
            "{:?}",
            b.issues
        );
        let b = resolve(
            &st.services[0],
            &st,
            None,
            &lbl(&[("traefik.swarm.network", "nope")]),
        );
        assert!(b.issues[0].message.contains("does not exist"));
        let edge: BTreeSet<String> = ["n-front".to_string()].into();
        let b = resolve(
            &st.services[0],
            &st,
            Some(&edge),
            &lbl(&[("traefik.swarm.network", "back")]),
        );
        assert!(
            b.issues[0].message.contains("edge is not attached"),
            "{:?}",
            b.issues
        );
    }

    #[test]
    fn lbswarm_uses_the_vip() {
        let st = state();
        let b = resolve(
            &st.services[0],
            &st,
            None,
            &lbl(&[
                ("traefik.swarm.network", "front"),
                ("traefik.swarm.lbswarm", "true"),
            ]),
        );
        assert!(b.vip);
        assert_eq!(b.ips, vec!["10.0.1.2".parse::<IpAddr>().unwrap()]);
        let b = resolve(
            &st.services[0],
            &st,
            None,
            &lbl(&[
                ("traefik.swarm.network", "back"),
                ("traefik.swarm.lbswarm", "true"),
            ]),
        );
        assert!(!b.vip);
        assert_eq!(b.ips.len(), 2);
        assert!(b.issues[0].message.contains("has none"));
    }

    #[test]
    fn no_running_task_names_the_states() {
        let mut st = state();
        st.tasks.retain(|t| t.id == "t4");
        st.tasks[0].error = Some("No such image: x".into());
        let b = resolve(
            &st.services[0],
            &st,
            None,
            &lbl(&[("traefik.swarm.network", "front")]),
        );
        let m = &b.issues[0].message;
        assert!(
            m.contains("no running task")
                && m.contains("1 starting")
                && m.contains("No such image"),
            "{m}"
        );
    }
}
