//! Hot reload: `kill -HUP` re-reads the configuration file and applies what changed, leaving every
//! unchanged route's streams untouched.
//!
//! - [`diff`]: what the new file changes against the running configuration (pure).
//! - Here: the SIGHUP watcher and the apply step. The file is loaded and checked as `--check` does;
//!   a file that does not pass is refused (logged as `PATH:LINE:COLUMN: reason`) and nothing
//!   changes. Otherwise new brokers connect, the gateway's snapshot is swapped whole (requests see
//!   the old configuration or the new one), then the streams of ended routes and of tokens whose key
//!   went are closed with a jittered `retry:`, the TLS certificate is replaced for new handshakes,
//!   and the simulator restarts if its settings changed. Listen addresses need an upgrade.
//!
//! Each reload is counted in `sluice_config_reloads_total` (see [`crate::admin::metrics`]).

pub mod diff;

use crate::brokers;
use crate::config::{self, Config};
use crate::http::{Gateway, Routing};
use crate::keys::CurrentCertificate;
use sluice_bridge::Bridge;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

/// What a reload applied (for its log line).
#[derive(Debug, Default)]
pub struct Applied {
    pub routes_kept: usize,
    pub routes_started: usize,
    pub routes_ended: usize,
    pub brokers_connected: usize,
    /// Topic memberships closed: ended routes' and revoked tokens'.
    pub memberships_closed: usize,
    /// What the file changes that needs an upgrade (the running values stay).
    pub needs_upgrade: Vec<&'static str>,
}

/// Why a reload was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The file does not pass `--check` (`PATH:LINE:COLUMN: reason`).
    #[error("{0}")]
    Invalid(#[from] config::ConfigError),
    #[error("broker {broker:?} cannot be set up: {error}")]
    Broker {
        broker: String,
        error: sluice_bridge::BridgeError,
    },
    #[error("{0}")]
    Internal(&'static str),
}

/// Applies configuration files to a running gateway.
pub struct Reloader {
    path: PathBuf,
    gateway: Arc<Gateway>,
    /// What the TLS listeners serve (when there are any).
    certificate: Option<Arc<CurrentCertificate>>,
    /// The simulator's task, if one runs.
    simulator: Option<JoinHandle<()>>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        gateway: Arc<Gateway>,
        certificate: Option<Arc<CurrentCertificate>>,
        simulator: Option<JoinHandle<()>>,
    ) -> Self {
        Self {
            path,
            gateway,
            certificate,
            simulator,
        }
    }

    /// Reloads on every SIGHUP, one reload at a time, on the current runtime (the broker runtime:
    /// new bridges live there). The handler is installed before this returns, so call it before
    /// anything may send SIGHUP (its default action ends the process).
    pub fn watch(mut self) -> std::io::Result<JoinHandle<()>> {
        let mut hangup = signal(SignalKind::hangup())?;
        Ok(tokio::spawn(async move {
            // Signals that arrive during a reload are merged into one more reload after it.
            while hangup.recv().await.is_some() {
                tracing::info!(file = %self.path.display(), "SIGHUP: reloading the configuration");
                // Logged and counted by `reload`; a refused file leaves nothing to do here.
                let _ = self.reload().await;
            }
        }))
    }

    /// Loads the file and applies it, or refuses it; logs and counts either.
    pub async fn reload(&mut self) -> Result<Applied, Refused> {
        let outcome = self.apply().await;
        crate::admin::metrics::global().config_reloaded(outcome.is_ok());
        match &outcome {
            Ok(applied) => {
                for what in &applied.needs_upgrade {
                    tracing::warn!(
                        "the configuration changes {what}: that needs an upgrade (a restart); \
                         the running ones stay"
                    );
                }
                tracing::info!(
                    routes_kept = applied.routes_kept,
                    routes_started = applied.routes_started,
                    routes_ended = applied.routes_ended,
                    brokers_connected = applied.brokers_connected,
                    memberships_closed = applied.memberships_closed,
                    "configuration reloaded"
                );
            }
            Err(refused) => tracing::error!(
                "configuration reload refused, the running configuration stays: {refused}"
            ),
        }
        outcome
    }

    async fn apply(&mut self) -> Result<Applied, Refused> {
        let new = config::load(&self.path)?;
        let running = self.gateway.routing();
        let diff = diff::diff(&running.config, &new);
        // Every new broker first: one that cannot be set up refuses the file before anything changed.
        let mut bridges: Vec<Arc<dyn Bridge>> = Vec::with_capacity(new.brokers.len());
        let mut brokers_connected = 0;
        for (broker, carried) in new.brokers.iter().zip(&diff.brokers) {
            let bridge = match carried.and_then(|i| running.bridges.get(i)) {
                Some(bridge) => bridge.clone(),
                None => {
                    brokers_connected += 1;
                    brokers::connect(broker)
                        .await
                        .map_err(|error| Refused::Broker {
                            broker: broker.name.clone(),
                            error,
                        })?
                }
            };
            bridges.push(bridge);
        }
        let (new, needs_upgrade) = diff::runnable(&running.config, new);
        let carried = |j: usize| {
            let i = diff.routes.get(j).copied().flatten()?;
            running.routes.get(i).cloned()
        };
        let routing = Arc::new(Routing::new(new, bridges, carried).map_err(Refused::Internal)?);
        let replaced = self.gateway.install(routing.clone());

        // The new configuration serves new requests now: end what it does not carry on. A client
        // whose stream ends reconnects (after its jittered retry) to the new configuration.
        let hub = self.gateway.hub();
        let mut memberships_closed = 0;
        for &i in &diff.ended {
            if let Some(route) = replaced.routes.get(i) {
                memberships_closed += hub.retire_route(route);
            }
        }
        memberships_closed += hub.revoke_keys(&diff.keys, &diff.keys_gone);
        if diff.certificate {
            if let (Some(current), Some(tls)) = (&self.certificate, &routing.config.server.tls) {
                current.replace(tls.certified.clone());
                tracing::info!(cert = %tls.cert.display(), "TLS certificate replaced for new connections");
            }
        }
        if diff.simulator {
            self.restart_simulator(&routing);
        }
        let kept = diff.routes.iter().flatten().count();
        Ok(Applied {
            routes_kept: kept,
            routes_started: diff.routes.len() - kept,
            routes_ended: diff.ended.len(),
            brokers_connected,
            memberships_closed,
            needs_upgrade,
        })
    }

    fn restart_simulator(&mut self, routing: &Routing) {
        if let Some(running) = self.simulator.take() {
            running.abort();
        }
        self.simulator = start_simulator(&routing.config, &routing.bridges);
    }
}

/// Starts the simulated devices of `config`, if it has them, on the current runtime.
pub fn start_simulator(config: &Config, bridges: &[Arc<dyn Bridge>]) -> Option<JoinHandle<()>> {
    let simulator = config.simulator.as_ref()?;
    let bridge = bridges.get(simulator.broker)?.clone();
    tracing::info!(devices = simulator.devices, "simulated devices publishing");
    Some(tokio::spawn(crate::simulator::run(
        simulator.clone(),
        bridge,
    )))
}
