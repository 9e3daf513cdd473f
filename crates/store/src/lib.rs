//! `store`: the replicated chunk store behind `/data`.
//!
//! Layers follow the data path (see `ARCHITECTURE.md`):
//!
//! * [`net`] — identities (cluster CA, join tokens), framing, QUIC transport
//!   with mutual TLS;
//! * [`cluster`] — Raft metadata group (openraft on redb): cluster map,
//!   namespace, leader forwarding, linearizable reads;
//! * [`placement`] — chunk → placement group → replica set;
//! * [`chunk`] and [`replication`] — on-disk chunks with crc32, replicated
//!   writes (≥ min_size) and reads with fallback and repair;
//! * [`api`] — object API and status on the admin HTTP port;
//! * [`cli`], [`admin_cli`], [`server`] — the binary's commands;
//! * [`bootstrap`] — zero-touch founding/joining in Docker Swarm.
//!
//! This crate is the library; `main.rs` only parses arguments and calls
//! [`cli::run`].

pub mod admin_cli;
pub mod api;
pub mod bootstrap;
pub mod chunk;
pub mod cli;
pub mod cluster;
pub mod fs;
pub mod maint;
pub mod mount;
pub mod net;
pub mod placement;
pub mod replication;
pub mod server;
