//! Plumbing that every b3 daemon shares, so `store`, `edge` and `vip` behave
//! alike from an operator's point of view: the same logging flags, the same
//! shutdown on SIGTERM/SIGINT, the same `/health` and `/metrics` endpoint on
//! their admin port.
//!
//! Nothing here knows about storage, proxying or VRRP.

pub mod admin;
pub mod daemon;
pub mod logging;
pub mod shutdown;

pub use admin::{AdminServer, Health, HealthStatus};
pub use logging::{LogArgs, LogFormat};
pub use shutdown::Shutdown;
