//! `vip`: VRRPv3 virtual-IP failover agent, wire-compatible with keepalived.
//!
//! This crate is the library; `main.rs` only parses arguments and calls
//! [`cli::run`].

pub mod cli;
