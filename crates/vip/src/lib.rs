//! `vip`: VRRPv3 virtual-IP failover agent, wire-compatible with keepalived.
//!
//! Modules follow the data path, each depending only on those above it:
//! [`packet`] (VRRPv3 codec) → [`fsm`] (RFC 5798 state machine, pure) →
//! [`config`] (flags, `VIP_*` and `KEEPALIVED_*` variables) → [`net`] (raw
//! socket, netlink addresses, gratuitous ARP) → [`health`] (checks and
//! weights) → [`agent`] (wires it together) → [`admin`] (status, metrics).
//! `main.rs` only parses arguments and calls [`cli::main`].

pub mod admin;
pub mod agent;
pub mod cli;
pub mod config;
pub mod fsm;
pub mod health;
pub mod net;
pub mod packet;
