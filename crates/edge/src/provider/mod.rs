//! Providers produce dynamic configurations; the proxy merges them. A
//! provider is any task holding a [`Sink`]: it pushes a whole new
//! [`Dynamic`] whenever its source changes (the file provider on a file
//! change, the Swarm provider on a Docker event), or reports a rejected
//! change. Names from different providers never clash: the proxy qualifies
//! them as `name@provider`, as Traefik does.

pub mod file;
pub mod swarm;

use tokio::sync::mpsc;

use crate::config::Dynamic;

/// Updates queued between providers and the proxy.
const QUEUE: usize = 64;

/// What a provider reports.
#[derive(Debug)]
pub enum Update {
    /// A new, complete configuration for this provider.
    Config {
        /// Provider name (`file`, `swarm`).
        provider: String,
        /// The configuration.
        config: Box<Dynamic>,
    },
    /// A change was rejected; the last good configuration keeps serving.
    Rejected {
        /// Provider name.
        provider: String,
        /// What was wrong and how to fix it.
        error: String,
    },
}

/// The sending side, one clone per provider.
#[derive(Debug, Clone)]
pub struct Sink {
    provider: String,
    tx: mpsc::Sender<Update>,
}

impl Sink {
    /// Pushes a new configuration. Returns false when the proxy is gone.
    pub async fn push(&self, config: Dynamic) -> bool {
        self.tx
            .send(Update::Config {
                provider: self.provider.clone(),
                config: Box::new(config),
            })
            .await
            .is_ok()
    }

    /// Reports a rejected change.
    pub async fn reject(&self, error: String) -> bool {
        self.tx
            .send(Update::Rejected {
                provider: self.provider.clone(),
                error,
            })
            .await
            .is_ok()
    }

    /// The provider's name.
    pub fn provider(&self) -> &str {
        &self.provider
    }
}

/// The receiving side, drained by the proxy.
pub struct Source {
    tx: mpsc::Sender<Update>,
    rx: mpsc::Receiver<Update>,
}

impl Default for Source {
    fn default() -> Self {
        Self::new()
    }
}

impl Source {
    /// A new channel.
    pub fn new() -> Source {
        let (tx, rx) = mpsc::channel(QUEUE);
        Source { tx, rx }
    }

    /// A sink for the provider named `provider`.
    pub fn sink(&self, provider: &str) -> Sink {
        Sink {
            provider: provider.to_string(),
            tx: self.tx.clone(),
        }
    }

    /// Next update, with any burst behind it coalesced: only the newest
    /// configuration of each provider matters.
    pub async fn next(&mut self) -> Option<Vec<Update>> {
        let first = self.rx.recv().await?;
        let mut out = vec![first];
        while let Ok(u) = self.rx.try_recv() {
            if let Update::Config { provider, .. } = &u {
                out.retain(|o| !matches!(o, Update::Config { provider: p, .. } if p == provider));
            }
            out.push(u);
        }
        Some(out)
    }
}
