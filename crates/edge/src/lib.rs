//! `edge`: Label-driven TLS reverse proxy for Docker Swarm services.
//!
//! This crate is the library; `main.rs` only parses arguments and calls
//! [`cli::run`].

pub mod cli;
