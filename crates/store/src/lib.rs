//! `store`: the replicated chunk store behind `/data`.
//!
//! Layers follow the data path (see `ARCHITECTURE.md`): `net` → `cluster` →
//! `placement` → `chunk` → `fs` → `mount` / `api` → `cli`. This crate is the
//! library; `main.rs` only parses arguments and calls [`cli::run`].

pub mod chunk;
pub mod cli;
pub mod fs;
pub mod mount;
pub mod net;
pub mod placement;
pub mod server;
