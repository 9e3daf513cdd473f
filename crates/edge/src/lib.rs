//! `edge`: Label-driven TLS reverse proxy for Docker Swarm services.
//!
//! Layers, outer depending on inner: [`config`] (model, rule language) →
//! [`provider`] (file; the Swarm provider plugs in the same way) → [`tls`]
//! (certificate store) → [`proxy`] (listeners, routing table, load
//! balancing, middlewares) → [`admin`] (dashboard, JSON API). `main.rs`
//! only parses arguments and calls [`cli::run`].

pub mod admin;
pub mod cli;
pub mod config;
pub mod provider;
pub mod proxy;
pub mod tls;

pub use provider::swarm;
