//! `edge`: Label-driven TLS reverse proxy for Docker Swarm services.
//!
//! Layers, outer depending on inner: [`config`] (model, rule language) →
//! `provider` (file, later Swarm) → `tls` (certificate store) → `proxy`
//! (listeners, routing table, load balancing, middlewares) → `admin`
//! (dashboard, JSON API, metrics). `main.rs` only parses arguments and calls
//! [`cli::run`].

pub mod cli;
pub mod config;
/// The Docker Swarm provider (lives under `provider/swarm/`; declared here
/// until `provider/mod.rs` exists on this branch).
#[path = "provider/swarm/mod.rs"]
pub mod swarm;
